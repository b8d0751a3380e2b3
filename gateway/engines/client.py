"""EngineClient: the one pooled HTTP client per engine, and the translation of httpx failures.

Every byte the gateway sends to a vLLM server goes through an :class:`EngineClient`: the OpenAI
proxy (``gateway.proxy``) uses :attr:`EngineClient.http` for raw pass-through, the adapter
lifecycle uses :meth:`load_lora` / :meth:`unload_lora`, engine supervision uses :meth:`health`.
httpx exceptions become :mod:`gateway.errors` here and nowhere else (:func:`translate_errors`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from gateway.errors import (
    AdapterLoadError,
    AdapterNotFoundError,
    EngineUnavailableError,
    UpstreamHTTPError,
    UpstreamTimeoutError,
)


@dataclass(frozen=True, slots=True)
class ClientLimits:
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 300.0
    max_connections: int = 512


@contextmanager
def translate_errors(engine_url: str) -> Iterator[None]:
    """Turn httpx's transport exceptions into the project's engine errors."""
    try:
        yield
    except httpx.ConnectError as exc:
        raise EngineUnavailableError(f"engine at {engine_url} is unreachable: {exc}") from exc
    except httpx.TimeoutException as exc:
        raise UpstreamTimeoutError(f"engine at {engine_url} timed out ({type(exc).__name__})") from exc
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
        raise EngineUnavailableError(f"engine at {engine_url} broke the connection: {exc}") from exc


def upstream_error_from(response_status: int, body: bytes) -> UpstreamHTTPError:
    """Build the pass-through error for an engine's error response, keeping its message."""
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
    return UpstreamHTTPError(response_status, message, error_type=error_type, param=param,
                             code=code)


class EngineClient:
    """Pooled async HTTP client bound to one engine's base URL."""

    def __init__(self, base_url: str, limits: ClientLimits | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.limits = limits or ClientLimits()
        self.http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(
                connect=self.limits.connect_timeout_s,
                read=self.limits.read_timeout_s,
                write=self.limits.read_timeout_s,
                pool=self.limits.connect_timeout_s,
            ),
            limits=httpx.Limits(
                max_connections=self.limits.max_connections,
                max_keepalive_connections=self.limits.max_connections,
            ),
        )

    async def aclose(self) -> None:
        await self.http.aclose()

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
        """Load adapter ``path`` under ``name``; an already-loaded name counts as success."""
        with translate_errors(self.base_url):
            response = await self.http.post(
                "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path}
            )
        if response.status_code == 200:
            return
        text = response.text
        if response.status_code == 400 and "already been loaded" in text:
            return
        raise AdapterLoadError(
            f"engine refused to load adapter {name!r} from {path}: "
            f"{upstream_error_from(response.status_code, response.content).message}",
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
