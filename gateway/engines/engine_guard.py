"""EngineKeyGuard: ASGI middleware that runs INSIDE the managed vLLM server and closes its gaps.

vLLM 0.32's own ``--api-key`` (or ``VLLM_API_KEY``) check guards only paths under ``/v1``,
``/v2``, ``/inference`` and ``/cohere``. Its server also answers ``/invocations`` (SageMaker:
completions and chat, adapters included), ``/tokenize``, ``/detokenize``, ``/pause``,
``/resume``, ``/start_profile`` and more without a key. The managed engine is started with
``--middleware gateway.engines.engine_guard.EngineKeyGuard`` (see
:meth:`gateway.engines.managed.ManagedVLLMEngine.command`), so every request but the read-only
probes needs the same ``Authorization: Bearer <VLLM_API_KEY>`` that the gateway's
:class:`gateway.engines.client.EngineClient` sends.

vLLM builds it as ``EngineKeyGuard(app)``; it reads the key from ``VLLM_API_KEY`` (the key never
appears on the command line). Without a key it lets everything through, like vLLM. It imports
nothing but the standard library, so vLLM's process pays nothing for it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: The environment variable vLLM reads its API key from; the guard uses the same one.
KEY_ENV = "VLLM_API_KEY"
#: Read-only probes that stay open (liveness, Prometheus); only with GET or HEAD.
OPEN_PATHS = frozenset({"/health", "/ping", "/metrics", "/version"})
_OPEN_METHODS = frozenset({"GET", "HEAD"})
_BODY = json.dumps(
    {
        "error": {
            "message": "This engine needs 'Authorization: Bearer <engine key>'.",
            "type": "authentication_error",
            "code": 401,
        }
    }
).encode()


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


class EngineKeyGuard:
    """Refuse (401) any HTTP request, and close any websocket, without the engine key."""

    def __init__(self, app: ASGIApp, key: str | None = None) -> None:
        self.app = app
        key = key if key is not None else os.environ.get(KEY_ENV, "")
        self._key_digest = _digest(key) if key.strip() else None

    def allows(self, method: str, path: str, authorization: str | None) -> bool:
        """Whether a request with this method, path and Authorization header may pass."""
        if self._key_digest is None or method == "OPTIONS":
            return True
        if method in _OPEN_METHODS and path in OPEN_PATHS:
            return True
        if not authorization:
            return False
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(_digest(token.strip()), self._key_digest)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        authorization = None
        for name, value in scope.get("headers", ()):
            if name.lower() == b"authorization":
                authorization = value.decode("latin-1")
                break
        path = str(scope.get("path", "")).removeprefix(str(scope.get("root_path", "")))
        method = str(scope.get("method", "GET")).upper()
        if self.allows(method, path or "/", authorization):
            await self.app(scope, receive, send)
            return
        if kind == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(_BODY)).encode()),
                    (b"www-authenticate", b"Bearer"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": _BODY})
