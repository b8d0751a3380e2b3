"""EngineClient: the pooled HTTP clients of one engine, and the translation of their failures.

Every byte the gateway sends to a vLLM server goes through an :class:`EngineClient`. Two pools:

* the data plane, :meth:`EngineClient.openai_session` (aiohttp): the OpenAI proxy
  (``gateway.inference.proxy``) forwards client requests and streams answers through it. aiohttp,
  not httpx, because this is the hot path: measured here, one pooled POST costs about 130 us of CPU
  with aiohttp and about 750 us with httpx (the gateway's whole budget is 1.5 ms);
* the control plane, :attr:`EngineClient.http` (httpx): the adapter lifecycle uses
  :meth:`load_lora` / :meth:`unload_lora`, engine supervision :meth:`health` and
  :meth:`list_models`, metrics :meth:`metrics_text`.

Both send the engine's key (``Authorization: Bearer``) when the engine has one: a managed engine
makes a new one at each start, a remote engine takes ``settings.engine_api_key``.

Library exceptions become :mod:`gateway.errors` here and nowhere else: httpx's in
:func:`translate_errors`, aiohttp's in :func:`translate_session_errors`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import httpx

from gateway.errors import (
    AdapterLoadError,
    AdapterNotFoundError,
    EngineError,
    EngineUnavailableError,
    UpstreamHTTPError,
    UpstreamTimeoutError,
)

if TYPE_CHECKING:
    from gateway.settings import GatewaySettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ClientLimits:
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 300.0
    max_connections: int = 512

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> ClientLimits:
        return cls(
            connect_timeout_s=settings.upstream_connect_timeout_s,
            read_timeout_s=settings.upstream_read_timeout_s,
            max_connections=settings.upstream_max_connections,
        )


def _unavailable(engine_url: str, what: str, exc: Exception, retry_after_s: int = 5) -> EngineError:
    # The engine's URL is internal: it goes to the log, never into a client-facing message.
    logger.warning("engine at %s: %s (%r)", engine_url, what, exc)
    return EngineUnavailableError(f"the engine {what}", retry_after_s=retry_after_s)


def _timed_out(engine_url: str, exc: Exception) -> EngineError:
    logger.warning("engine at %s timed out (%r)", engine_url, exc)
    return UpstreamTimeoutError(f"the engine timed out ({type(exc).__name__})")


def _failed(engine_url: str, exc: Exception) -> EngineError:
    logger.warning("talking to the engine at %s failed: %r", engine_url, exc)
    return EngineError(f"talking to the engine failed ({type(exc).__name__})")


@contextmanager
def translate_errors(engine_url: str) -> Iterator[None]:
    """Turn httpx's transport exceptions into the project's engine errors.

    Unreachable (refused, connect timeout) or a connection that broke: 503 with Retry-After.
    No answer in time: 504. No free pooled connection in time: 503 (the gateway is saturated).
    Messages never carry ``engine_url`` (an internal address); it is logged instead.
    """
    try:
        yield
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise _unavailable(engine_url, "is unreachable", exc) from exc
    except httpx.PoolTimeout as exc:
        raise _unavailable(
            engine_url, "has no free connection in time", exc, retry_after_s=1
        ) from exc
    except httpx.TimeoutException as exc:
        raise _timed_out(engine_url, exc) from exc
    except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
        raise _unavailable(engine_url, "broke the connection", exc) from exc
    except httpx.HTTPError as exc:
        raise _failed(engine_url, exc) from exc


@contextmanager
def translate_session_errors(engine_url: str) -> Iterator[None]:
    """The same translation as :func:`translate_errors`, for the aiohttp data plane."""
    try:
        yield
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
        raise _unavailable(engine_url, "is unreachable", exc) from exc
    except (TimeoutError, aiohttp.SocketTimeoutError) as exc:
        raise _timed_out(engine_url, exc) from exc
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
        raise _unavailable(engine_url, "broke the connection", exc) from exc
    except aiohttp.ClientError as exc:
        raise _failed(engine_url, exc) from exc


#: The code of the error raised when an engine answers 401: it refused the gateway's engine key.
ENGINE_KEY_REFUSED = "engine_key_refused"


def upstream_error_from(response_status: int, body: bytes) -> UpstreamHTTPError:
    """Build the pass-through error for an engine's error response, keeping its message.

    A 401 is the exception: the engine refused the gateway's own key (a configuration fault,
    not the client's key), so the client sees a 502 that says so.
    """
    if response_status == 401:
        return UpstreamHTTPError(
            502,
            "the engine refused the gateway's engine key (for a remote engine, set "
            "LORA_GATEWAY_ENGINE_API_KEY to its --api-key)",
            error_type="upstream_error",
            code=ENGINE_KEY_REFUSED,
        )
    message = body.decode("utf-8", "replace").strip() or f"engine answered {response_status}"
    error_type = param = code = None
    try:
        payload: Any = json.loads(body)
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        err = payload.get("error", payload)
        if isinstance(err, dict):
            message = str(err.get("message") or err.get("detail") or message)
            error_type = err.get("type") if isinstance(err.get("type"), str) else None
            param = err.get("param") if isinstance(err.get("param"), str) else None
            raw_code = err.get("code")
            code = raw_code if isinstance(raw_code, str | int) else None
        elif isinstance(payload.get("detail"), str):
            message = payload["detail"]
    return UpstreamHTTPError(
        response_status, message, error_type=error_type, param=param, code=code
    )


#: Below uvicorn's (so vLLM's) 5 s keep-alive: a pooled connection is never reused just as the
#: engine closes it, which would fail a POST that cannot be retried.
DATA_PLANE_KEEPALIVE_S = 4.0
#: The same for the control-plane httpx pool (health, metrics, adapter loads).
CONTROL_PLANE_KEEPALIVE_S = 2.0


class EngineClient:
    """Pooled async HTTP clients bound to one engine's base URL."""

    def __init__(
        self, base_url: str, limits: ClientLimits | None = None, *, api_key: str | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.limits = limits or ClientLimits()
        self._session: aiohttp.ClientSession | None = None
        #: Sent with every request of both pools; never logged.
        self._auth_headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=self._auth_headers,
            timeout=httpx.Timeout(
                connect=self.limits.connect_timeout_s,
                read=self.limits.read_timeout_s,
                write=self.limits.read_timeout_s,
                pool=self.limits.connect_timeout_s,
            ),
            limits=httpx.Limits(
                max_connections=self.limits.max_connections,
                max_keepalive_connections=self.limits.max_connections,
                # Below uvicorn's 5 s keep-alive (vLLM's server): reusing a connection the
                # server is closing at that moment fails with "Server disconnected".
                keepalive_expiry=CONTROL_PLANE_KEEPALIVE_S,
            ),
        )

    def openai_session(self) -> aiohttp.ClientSession:
        """The data-plane pool, made on first use (it binds to the running event loop).

        Paths are joined by the caller (``client.base_url + path``), so an engine URL may carry
        a path prefix.
        """
        if self._session is None or self._session.closed:
            limits = self.limits
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=limits.max_connections,
                    keepalive_timeout=DATA_PLANE_KEEPALIVE_S,
                ),
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    # ``connect`` includes waiting for a free pooled connection.
                    connect=limits.connect_timeout_s,
                    sock_connect=limits.connect_timeout_s,
                    sock_read=limits.read_timeout_s,
                ),
                auto_decompress=False,
                skip_auto_headers=("User-Agent",),
                headers=self._auth_headers,
            )
        return self._session

    async def aclose(self) -> None:
        await self.http.aclose()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def health(self, timeout_s: float = 2.0) -> bool:
        try:
            response = await self.http.get("/health", timeout=timeout_s)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def list_models(self) -> list[dict[str, Any]]:
        with translate_errors(self.base_url):
            response = await self.http.get("/v1/models")
        if response.status_code != 200:
            raise upstream_error_from(response.status_code, response.content)
        data = response.json().get("data", [])
        return [item for item in data if isinstance(item, dict)]

    async def metrics_text(self) -> str:
        with translate_errors(self.base_url):
            response = await self.http.get("/metrics")
        if response.status_code != 200:
            raise upstream_error_from(response.status_code, response.content)
        return response.text

    async def load_lora(self, name: str, path: str) -> None:
        """Load adapter ``path`` under ``name``; an already-loaded name counts as success.

        A 4xx is the engine refusing this adapter: :class:`AdapterLoadError`. A 5xx (vLLM answers
        500 for any exception while it adds the adapter, a busy or dying engine included) or a
        transport failure is an engine error (:class:`UpstreamHTTPError`,
        :class:`EngineUnavailableError`, ...): the adapter itself may be fine, so the lifecycle
        does not mark it failed for good.
        """
        with translate_errors(self.base_url):
            response = await self.http.post(
                "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path}
            )
        if response.status_code == 200:
            return
        text = response.text
        if response.status_code == 400 and "already been loaded" in text:
            return
        error = upstream_error_from(response.status_code, response.content)
        if response.status_code >= 500:
            raise UpstreamHTTPError(
                response.status_code,
                f"the engine failed to load adapter {name!r}: {error.message}",
                error_type="upstream_error",
                code="engine_load_error",
            )
        raise AdapterLoadError(
            f"the engine refused to load adapter {name!r}: {error.message}",
            code="engine_load_failed",
        )

    async def unload_lora(self, name: str) -> None:
        """Unload ``name``; raises AdapterNotFoundError if the engine does not know it."""
        with translate_errors(self.base_url):
            response = await self.http.post("/v1/unload_lora_adapter", json={"lora_name": name})
        if response.status_code == 200:
            return
        if response.status_code == 404:
            raise AdapterNotFoundError(f"engine has no adapter {name!r} loaded")
        raise upstream_error_from(response.status_code, response.content)
