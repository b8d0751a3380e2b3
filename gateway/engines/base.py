"""The engine seam: what the gateway needs of one vLLM OpenAI server.

Two implementations: :mod:`gateway.engines.managed` starts and supervises a vLLM child process;
:mod:`gateway.engines.remote` watches a vLLM that someone else runs (the production shape in
deploy/). Both expose the same state, a base URL to send OpenAI requests to, and ready listeners
that the adapter lifecycle uses to re-apply the registry's desired state after every (re)start.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

from gateway.engines.client import ClientLimits, EngineClient


class EngineState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    DOWN = "down"  # died or unreachable; a managed engine is being restarted
    STOPPED = "stopped"  # stopped on purpose


@dataclass(frozen=True, slots=True)
class EngineStatus:
    name: str
    state: EngineState
    reason: str
    restarts: int
    url: str


logger = logging.getLogger(__name__)

ReadyListener = Callable[["Engine"], Awaitable[None]]


class Engine(abc.ABC):
    """One vLLM server with LoRA enabled, serving one base model."""

    def __init__(
        self,
        name: str,
        base_model: str,
        lora_capacity: int,
        client_limits: ClientLimits | None = None,
        api_key: str | None = None,
    ) -> None:
        self.name = name
        #: The id of the base model on the engine (vLLM's --served-model-name).
        self.base_model = base_model
        #: How many adapters it holds loaded at once (vLLM's --max-cpu-loras).
        self.lora_capacity = lora_capacity
        self._ready_listeners: list[ReadyListener] = []
        self._client_limits = client_limits or ClientLimits()
        self._client: EngineClient | None = None
        self._api_key = api_key

    @property
    def api_key(self) -> str | None:
        """The key the engine's API wants (``Authorization: Bearer``); None: it wants none."""
        return self._api_key

    async def _use_api_key(self, key: str | None) -> None:
        """Switch to a new engine key; the client made with the old one is closed."""
        if key != self._api_key:
            self._api_key = key
            await self.close_client()

    @property
    def client(self) -> EngineClient:
        """The one pooled HTTP client for this engine, made on first use."""
        if self._client is None:
            self._client = EngineClient(self.url, self._client_limits, api_key=self._api_key)
        return self._client

    async def close_client(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def add_ready_listener(self, listener: ReadyListener) -> None:
        """Called after each transition to READY (first start and every restart)."""
        self._ready_listeners.append(listener)

    def remove_ready_listener(self, listener: ReadyListener) -> None:
        """Forget a listener, e.g. when an app built around a shared engine shuts down."""
        if listener in self._ready_listeners:
            self._ready_listeners.remove(listener)

    async def _notify_ready(self) -> None:
        # Each listener runs even if an earlier one failed: a failure is logged, not raised.
        for listener in list(self._ready_listeners):
            try:
                await listener(self)
            except Exception:
                logger.exception("engine %s: ready listener %r failed", self.name, listener)

    @property
    @abc.abstractmethod
    def url(self) -> str:
        """Base URL of the engine's HTTP server, e.g. ``http://127.0.0.1:41234``."""

    @abc.abstractmethod
    def status(self) -> EngineStatus: ...

    @abc.abstractmethod
    async def start(self) -> None:
        """Start (or begin watching) the engine; returns once supervision runs, not when ready."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop supervision; a managed engine's whole process tree is ended."""

    @property
    def ready(self) -> bool:
        return self.status().state is EngineState.READY

    def _not_ready_detail(self) -> str:
        """Extra context for a wait_ready timeout (a managed engine adds its log's tail)."""
        return ""

    async def wait_ready(self, timeout: float) -> None:  # noqa: ASYNC109 (the bound is reported)
        """Return once READY; RuntimeError if stopped, TimeoutError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while (status := self.status()).state is not EngineState.READY:
            if status.state is EngineState.STOPPED:
                raise RuntimeError(f"engine {self.name} is stopped ({status.reason})")
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"engine {self.name} not ready after {timeout:.0f} s: {status.reason}"
                    + self._not_ready_detail()
                )
            await asyncio.sleep(0.1)
