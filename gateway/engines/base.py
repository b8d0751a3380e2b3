"""The engine seam: what the gateway needs of one vLLM OpenAI server.

Two implementations: :mod:`gateway.engines.managed` starts and supervises a vLLM child process;
:mod:`gateway.engines.remote` watches a vLLM that someone else runs (the production shape in
deploy/). Both expose the same state, a base URL to send OpenAI requests to, and ready listeners
that the adapter lifecycle uses to re-apply the registry's desired state after every (re)start.

Both decide READY and DOWN with the ONE health-watch loop here, :meth:`WatchedEngine._watch_health`:
poll ``/health`` (fast while not ready, every ``interval_s`` once ready); a passing check of an
engine that is not READY calls ``_health_passed`` (the subclass decides whether it is ready
now); :data:`UNHEALTHY_CHECKS_TO_DOWN` failed checks in a row of a READY engine, or no passing
check within a start-up bound, call ``_health_lost``. A managed engine's watch also ends when
its process exits (``_exit_cause``) and after DOWN, because its supervisor restarts the
process; a remote engine's never ends while it is watched.
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


class StartPhase(StrEnum):
    """Where a (re)starting engine is, as the serve command's progress line says it."""

    PREPARING_MODEL = "preparing the base model"
    STARTING_ENGINE = "starting vLLM"
    ENGINE_READY = "engine ready"  # ready listeners (adapter re-apply) still running
    ADAPTERS_APPLIED = "adapters re-applied"


@dataclass(frozen=True, slots=True)
class EngineStatus:
    name: str
    state: EngineState
    reason: str
    restarts: int
    url: str


logger = logging.getLogger(__name__)

ReadyListener = Callable[["Engine"], Awaitable[None]]

#: Consecutive failed health checks of a READY engine before it counts as DOWN.
UNHEALTHY_CHECKS_TO_DOWN = 3
HEALTH_TIMEOUT_S = 5.0
#: How often an engine that is not READY is polled (a READY one every ``interval_s``).
STARTING_POLL_S = 0.5


@dataclass(frozen=True, slots=True)
class HealthWatch:
    """How :meth:`WatchedEngine._watch_health` polls one engine."""

    #: Between checks of a READY engine (settings.engine_health_interval_s).
    interval_s: float
    #: A watch with no passing check this long after it began ends DOWN (None: waits forever).
    startup_timeout_s: float | None = None
    #: Return once the engine is DOWN (a supervisor restarts it) instead of watching on.
    end_when_down: bool = False


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
        self._listeners_done = False
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
        self._listeners_done = False
        try:
            for listener in list(self._ready_listeners):
                try:
                    await listener(self)
                except Exception:
                    logger.exception("engine %s: ready listener %r failed", self.name, listener)
        finally:
            self._listeners_done = True

    def start_phase(self) -> StartPhase | None:
        """The start phase while STARTING or READY; None when DOWN or STOPPED."""
        state = self.status().state
        if state is EngineState.STARTING:
            return StartPhase.STARTING_ENGINE
        if state is EngineState.READY:
            return StartPhase.ADAPTERS_APPLIED if self._listeners_done else StartPhase.ENGINE_READY
        return None

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


class WatchedEngine(Engine):
    """An engine whose READY / DOWN come from polling its ``/health``: the managed and remote
    engines. Subclasses say what a passing check and a lost engine mean (:meth:`_health_passed`,
    :meth:`_health_lost`) and run :meth:`_watch_health` in their own task."""

    #: Failed health checks in a row, in the current watch (shown in a remote engine's reason).
    _failed_checks: int = 0

    async def _watch_health(self, watch: HealthWatch) -> bool:
        """Poll ``/health`` and drive READY / DOWN through the hooks below.

        Returns (only with ``watch.end_when_down``, or when :meth:`_exit_cause` reports an exit)
        whether the engine was READY at some point of this watch.
        """
        started = time.monotonic()
        reached_ready = False
        self._failed_checks = 0
        while True:
            exited = self._exit_cause()
            if exited is not None:
                self._health_lost(exited)
                return reached_ready
            healthy = await self.client.health(timeout_s=HEALTH_TIMEOUT_S)
            if self._exit_cause() is not None:
                continue  # the exit, not the check, is the news
            if healthy:
                self._failed_checks = 0
                if not self.ready:
                    await self._health_passed()
                    reached_ready = reached_ready or self.ready
            else:
                self._failed_checks += 1
                lost = self._verdict(watch, started)
                if lost is not None:
                    self._health_lost(lost)
                    if watch.end_when_down:
                        return reached_ready
            await asyncio.sleep(
                watch.interval_s if self.ready else min(STARTING_POLL_S, watch.interval_s)
            )

    def _verdict(self, watch: HealthWatch, started: float) -> str | None:
        """Why a failed check makes the engine DOWN, or None while it is not (yet) down."""
        if self.ready:
            if self._failed_checks >= UNHEALTHY_CHECKS_TO_DOWN:
                return f"unhealthy ({self._failed_checks} failed health checks)"
            return None
        limit = watch.startup_timeout_s
        if limit is not None and time.monotonic() - started > limit:
            return f"not healthy {limit:.0f} s after start"
        return None

    def _exit_cause(self) -> str | None:
        """Why the engine is gone for sure (a managed engine's process exited), else None."""
        return None

    @abc.abstractmethod
    async def _health_passed(self) -> None:
        """A check passed while not READY: become READY (and notify listeners) if it is."""

    @abc.abstractmethod
    def _health_lost(self, cause: str) -> None:
        """The watch found the engine down for ``cause``: record the DOWN state."""
