"""Client API keys for ``/v1/*``: ``Authorization: Bearer <key>`` (or ``x-api-key: <key>``, as
Anthropic's SDK sends it), compared in constant time.

:func:`gateway.app.create_app` adds an :class:`ApiKeyAuth` as a dependency of the OpenAI routes
when ``settings.api_keys`` is non-empty (with no keys configured the routes are open and pay
nothing). ``/healthz``, ``/readyz`` and ``/metrics`` are never behind it; ``/admin`` has its own
token. Keys are never logged or echoed.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from pydantic import SecretStr
from starlette.requests import Request

from gateway.errors import AuthenticationError

#: A header longer than this cannot hold a key we issued; refuse it before comparing.
MAX_AUTHORIZATION_CHARS = 1024
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


class ApiKeyAuth:
    """FastAPI dependency: passes when the bearer token equals one of the configured keys."""

    def __init__(self, keys: Sequence[SecretStr]) -> None:
        if not keys:
            raise ValueError("ApiKeyAuth needs at least one key")
        if any(not key.get_secret_value().strip() for key in keys):
            raise ValueError("ApiKeyAuth refuses an empty key (a bare 'Bearer' would pass)")
        self._keys = [key.get_secret_value().encode() for key in keys]

    def check(self, authorization: str | None) -> None:
        if not authorization:
            raise AuthenticationError(
                "Missing API key: send it as 'Authorization: Bearer <key>'.",
                code="missing_api_key",
                headers=_CHALLENGE,
            )
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or len(authorization) > MAX_AUTHORIZATION_CHARS:
            raise AuthenticationError(
                "Malformed Authorization header: expected 'Bearer <key>'.", headers=_CHALLENGE
            )
        candidate = token.strip().encode()
        # Compare with every key, not stopping at a match, so timing says nothing of which.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(candidate, key)
        if not matched:
            raise AuthenticationError("Incorrect API key provided.", headers=_CHALLENGE)

    async def __call__(self, request: Request) -> None:
        authorization = request.headers.get("authorization")
        if authorization is None and (key := request.headers.get("x-api-key")) is not None:
            authorization = f"Bearer {key}"  # Anthropic's SDK sends its key this way
        self.check(authorization)
