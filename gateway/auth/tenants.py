"""Who is calling ``/v1`` and what they may do: the client's key, its scope, its limits.

:class:`Tenants` is built once per app by :func:`gateway.app.create_app` and used by

* the ``/v1`` dependency (:func:`gateway.api.deps.get_principal`): :meth:`Tenants.authenticate`
  turns ``Authorization: Bearer ...`` into a :class:`Principal`: a virtual key from the
  registry (:mod:`gateway.auth.key_store`), a static ``--api-key`` (unrestricted), or nobody
  when the gateway is open (no static keys and no virtual key was ever made);
* the OpenAI routes: :meth:`Tenants.admit` (a model outside the key's scope is the same 404 as
  an unknown model; limits through :class:`gateway.auth.limits.KeyLimiter`) and
  :meth:`Tenants.visible` for ``/v1/models``;
* the admin API (:mod:`gateway.api.admin.keys`) through :attr:`Tenants.store`;
* the error handlers and ``/v1/models``: :meth:`Tenants.limit_headers`, so that every answer
  to a limited key carries its x-ratelimit-* headers, errors included.

Key lookups are cached per secret hash for ``cache_ttl_s`` (1 s by default), so the database
sees at most one query per key per second however hot the key, and a revocation is refused by
every replica within that TTL. Unknown keys are cached too (bounded), so a flood of bad keys
cannot turn into a flood of queries.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import SecretStr

from gateway.auth.adapter_limits import AdapterLimitStore, adapter_subject
from gateway.auth.client_keys import MAX_AUTHORIZATION_CHARS, ApiKeyAuth
from gateway.auth.key_store import KeyStore
from gateway.auth.keys import SECRET_PREFIX, KeyLimits, VirtualKey, hash_secret
from gateway.auth.limits import Admission, KeyLimiter, Subject, TokenSink, unlimited
from gateway.auth.usage_records import NO_KEY, STATIC_KEY, UsageRecorder
from gateway.errors import AuthenticationError
from gateway.inference.routing import unknown_model

#: The caller labels of ``lora_gateway_key_tokens_total`` other than a key's name (which must
#: start with a letter or digit, so these cannot collide with one).
STATIC_KEY_LABEL = "__static__"
OPEN_KEY_LABEL = "__open__"
logger = logging.getLogger(__name__)

DEFAULT_CACHE_TTL_S = 1.0
MAX_CACHED_KEYS = 100_000
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of one request. ``key`` None: a static key or an open gateway (no limits)."""

    key: VirtualKey | None = None

    def may_use(self, model: str) -> bool:
        return self.key is None or self.key.may_use(model)


ANONYMOUS = Principal()


class Tenants:
    def __init__(
        self,
        store: KeyStore,
        limiter: KeyLimiter,
        static_keys: Sequence[SecretStr] = (),
        *,
        usage: UsageRecorder | None = None,
        adapter_limits: AdapterLimitStore | None = None,
        tokens: TokenSink | None = None,
        cache_ttl_s: float = DEFAULT_CACHE_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.limiter = limiter
        self.usage = usage
        self.tokens = tokens
        self._static = ApiKeyAuth(static_keys) if static_keys else None
        self._ttl = cache_ttl_s
        self._clock = clock
        self._keys: dict[str, tuple[float, VirtualKey | None]] = {}
        self._any_key: tuple[float, bool] | None = None
        self.adapter_limits = adapter_limits
        self._adapter_limits: tuple[float, dict[str, KeyLimits]] | None = None

    def forget(self) -> None:
        """Drop every cached lookup (the admin API calls it after each change here)."""
        self._keys.clear()
        self._any_key = None
        self._adapter_limits = None

    async def _limits_of(self, model: str) -> KeyLimits | None:
        if self.adapter_limits is None:
            return None
        now = self._clock()
        if self._adapter_limits is None or self._adapter_limits[0] <= now:
            rows = await asyncio.to_thread(self.adapter_limits.all)
            self._adapter_limits = (now + self._ttl, rows)
        return self._adapter_limits[1].get(model)

    async def _keys_required(self) -> bool:
        if self._static is not None:
            return True
        now = self._clock()
        if self._any_key is None or self._any_key[0] <= now:
            self._any_key = (now + self._ttl, await asyncio.to_thread(self.store.any_key))
        return self._any_key[1]

    async def _lookup(self, secret: str) -> VirtualKey | None:
        digest = hash_secret(secret)
        now = self._clock()
        cached = self._keys.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        key = await asyncio.to_thread(self.store.by_hash, digest)
        if len(self._keys) >= MAX_CACHED_KEYS:
            self._keys.clear()
        self._keys[digest] = (now + self._ttl, key)
        return key

    async def authenticate(self, authorization: str | None) -> Principal:
        if not await self._keys_required():
            return ANONYMOUS
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if (
            token.startswith(SECRET_PREFIX)
            and scheme.lower() == "bearer"
            and len(authorization or "") <= MAX_AUTHORIZATION_CHARS
        ):
            key = await self._lookup(token)
            if key is not None:
                return Principal(self._usable(key))
        if self._static is not None:
            self._static.check(authorization)  # raises 401 unless a static key matches
            return ANONYMOUS
        if not authorization:
            raise AuthenticationError(
                "Missing API key: send it as 'Authorization: Bearer <key>'.",
                code="missing_api_key",
                headers=_CHALLENGE,
            )
        raise AuthenticationError("Incorrect API key provided.", headers=_CHALLENGE)

    @staticmethod
    def _usable(key: VirtualKey) -> VirtualKey:
        if key.revoked_at is not None:
            raise AuthenticationError(
                f"The API key {key.prefix}... has been revoked.",
                code="revoked_api_key",
                headers=_CHALLENGE,
            )
        if not key.usable_at(datetime.now(UTC)):
            raise AuthenticationError(
                f"The API key {key.prefix}... expired at {key.expires_at}.",
                code="expired_api_key",
                headers=_CHALLENGE,
            )
        return key

    async def admit(self, principal: Principal, model: str) -> Admission:
        """Before routing: 404 for a model out of scope (as for an unknown one); 429 over the
        key's limits or the model's own."""
        subjects: list[Subject] = []
        if principal.key is not None:
            if not principal.key.may_use(model):
                raise unknown_model(model)
            subjects.append(Subject.of_key(principal.key))
        model_limits = await self._limits_of(model)
        if model_limits is not None:
            subjects.append(adapter_subject(model, model_limits))
        admission = await self.limiter.admit(subjects) if subjects else unlimited()
        if principal.key is not None:
            admission.usage_key = principal.key.id
            admission.token_label = principal.key.name
        elif self._static is not None:
            admission.usage_key, admission.token_label = STATIC_KEY, STATIC_KEY_LABEL
        else:
            admission.usage_key, admission.token_label = NO_KEY, OPEN_KEY_LABEL
        admission.usage = self.usage
        admission.tokens = self.tokens
        return admission

    async def limit_headers(
        self, principal: Principal, present: Collection[str] = ()
    ) -> dict[str, str]:
        """The caller's x-ratelimit-* headers as they stand (nothing counted), for an answer
        that is not an admitted request's; {} for a caller without request or token limits, or
        when ``present`` (lower-case names) already has them. The limit store failing costs
        the answer its headers, never the answer."""
        key = principal.key
        if key is None:
            return {}
        wanted = []
        if key.limits.rpm is not None:
            wanted.append("x-ratelimit-limit-requests")
        if key.limits.tpm is not None:
            wanted.append("x-ratelimit-limit-tokens")
        if all(name in present for name in wanted):
            return {}
        try:
            return await self.limiter.peek(Subject.of_key(key))
        except Exception:
            logger.warning("could not read the limits of key %s", key.prefix, exc_info=True)
            return {}

    def visible(self, principal: Principal, model_ids: Sequence[str]) -> list[str]:
        return [model for model in model_ids if principal.may_use(model)]
