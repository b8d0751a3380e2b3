"""RemoteVLLMEngine: a vLLM OpenAI server that someone else runs (``--engine-url``).

Built by :func:`gateway.engines.factory.build_engines` for each of ``settings.engine_urls`` (the
production shape of deploy/). No process to own: a watch task runs the engines' one health-watch
loop (:meth:`~gateway.engines.base.WatchedEngine._watch_health`) and drives the same states as
the managed engine, STARTING until the server answers, READY (ready listeners
run, so the adapter lifecycle re-applies adapters after the server was restarted elsewhere),
DOWN after repeated failed checks, READY again when it is back. On each transition to READY it
reads the served base model name from the server's ``/v1/models`` (the entry without a parent).
Its requests carry ``settings.engine_api_key`` (the server's ``--api-key``) when one is set.
"""

from __future__ import annotations

import asyncio
import logging
import time

import httpx

from gateway.engines.base import EngineState, EngineStatus, HealthWatch, WatchedEngine
from gateway.engines.client import ENGINE_KEY_REFUSED, ClientLimits
from gateway.errors import GatewayError, InvalidRequestError
from gateway.settings import GatewaySettings

logger = logging.getLogger(__name__)


class RemoteVLLMEngine(WatchedEngine):
    """Watches one vLLM server at ``url``; assumes it runs with the settings' LoRA limits."""

    def __init__(self, settings: GatewaySettings, url: str, *, name: str = "remote-0") -> None:
        super().__init__(
            name,
            settings.served_model_name or settings.base_model,
            settings.cpu_lora_capacity,
            ClientLimits.from_settings(settings),
            api_key=(
                settings.engine_api_key.get_secret_value() if settings.engine_api_key else None
            ),
        )
        self.settings = settings
        self._url = _checked_url(url)
        self._task: asyncio.Task[None] | None = None
        self._state = EngineState.STOPPED
        self._cause = "not started"
        self._since = time.monotonic()

    @property
    def url(self) -> str:
        return self._url

    def status(self) -> EngineStatus:
        return EngineStatus(
            name=self.name, state=self._state, reason=self._reason(), restarts=0, url=self._url
        )

    async def start(self) -> None:
        if self._task is not None and not self._task.done():
            return
        self._set_state(EngineState.STARTING, "waiting for the engine")
        logger.info("engine %s: waiting for %s", self.name, self._url)
        self._task = asyncio.create_task(self._watch(), name=f"watch-{self.name}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._set_state(EngineState.STOPPED, "stopped")
        await self.close_client()

    async def _watch(self) -> None:
        await self._watch_health(HealthWatch(interval_s=self.settings.engine_health_interval_s))

    def _health_lost(self, cause: str) -> None:
        self._set_state(EngineState.DOWN, "unreachable or unhealthy")
        logger.warning("engine %s at %s down: %s", self.name, self._url, cause)

    async def _health_passed(self) -> None:
        """Ready once ``/v1/models`` names the served base model."""
        try:
            models = await self.client.list_models()
        except GatewayError as exc:
            cause = f"healthy but /v1/models failed: {exc.message}"
            if exc.code == ENGINE_KEY_REFUSED and cause != self._cause:
                logger.warning("engine %s at %s: %s", self.name, self._url, exc.message)
            self._cause = cause
            return
        bases = [str(model["id"]) for model in models if model.get("parent") is None]
        if not bases:
            self._cause = "healthy but /v1/models lists no base model"
            return
        if bases[0] != self.base_model:
            logger.info("engine %s serves base model %r", self.name, bases[0])
        self.base_model = bases[0]
        self._set_state(EngineState.READY, "ready")
        await self._notify_ready()

    def _set_state(self, state: EngineState, cause: str) -> None:
        if state is not self._state:
            self._since = time.monotonic()
        self._state = state
        self._cause = cause

    def _reason(self) -> str:
        elapsed = time.monotonic() - self._since
        if self._state is EngineState.READY:
            return "ready"
        if self._state in (EngineState.STARTING, EngineState.DOWN) and self._failed_checks:
            return f"{self._cause} ({self._failed_checks} failed health checks, {elapsed:.0f} s)"
        return self._cause


def _checked_url(url: str) -> str:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise InvalidRequestError(
            f"engine URL {url!r} is invalid: {exc}", param="engine_url"
        ) from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise InvalidRequestError(
            f"engine URL {url!r} must be http(s)://HOST[:PORT], e.g. http://127.0.0.1:8001",
            param="engine_url",
        )
    return url.rstrip("/")
