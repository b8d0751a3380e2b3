"""The state the adapter lifecycle's parts share, and the two rules they all follow.

One :class:`LifecycleContext` is built by :class:`gateway.lifecycle.service.AdapterLifecycle`
and handed to the lease path (:mod:`~gateway.lifecycle.lease`), the engine loader
(:mod:`~gateway.lifecycle.loader`) and the restart recovery (:mod:`~gateway.lifecycle.recovery`).
It holds what is registered (``records``, a cache of the registry), what is loaded (the slot
table of :mod:`gateway.placement.slots`), failed loads (:mod:`~gateway.lifecycle.cooldown`) and
what should be loaded again after an engine restart (``wanted``), and renders the admin view of it.

The rules:

* An :class:`asyncio.Lock` per adapter name serialises the decisions about that name (load,
  unload, swap, delete). A lock is held for engine I/O of that name only, never while waiting
  for something else (a free slot, requests in flight to drain): waiting happens outside it.
* Work that must not stop half way when its caller goes (an HTTP client hanging up cancels the
  request's task) runs in a task of its own, :meth:`LifecycleContext.shielded`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from adapters.errors import AdapterError
from adapters.registry import AdapterRecord, Registry
from adapters.state import AdapterState
from gateway.engines.base import Engine
from gateway.errors import AdapterNotFoundError, GatewayError
from gateway.lifecycle.cooldown import LoadFailures
from gateway.lifecycle.types import AdapterView, LifecycleObserver, VersionView
from gateway.placement.board import PlacementBoard
from gateway.placement.slots import Slot, SlotTable

logger = logging.getLogger(__name__)

T = TypeVar("T")


class LifecycleContext:
    def __init__(
        self,
        registry: Registry,
        engines: Sequence[Engine],
        table: SlotTable,
        failures: LoadFailures,
        observer: LifecycleObserver,
        clock: Callable[[], float],
        *,
        slot_wait_s: float,
        drain_timeout_s: float,
        replicate_threshold: int = 4,
        board: PlacementBoard | None = None,
    ) -> None:
        self.registry = registry
        #: Where loads claim a place and unloads release it (shared with other replicas, or
        #: this process's own, which grants everything).
        self.board = board or PlacementBoard()
        #: Ask the replica sync loop for a tick now (set when there is one).
        self.resync: Callable[[], None] = lambda: None
        self.engines = list(engines)
        self.by_name = {engine.name: engine for engine in self.engines}
        self.table = table
        self.failures = failures
        self.observer = observer
        self.clock = clock
        #: How long a request (or an admin load) waits for a busy slot before CapacityError.
        self.slot_wait_s = slot_wait_s
        #: How long an admin unload or delete waits for requests in flight before a 409.
        self.drain_timeout_s = drain_timeout_s
        #: Affinity: a version's in-flight requests on each engine holding it from which it is
        #: copied onto one more engine.
        self.replicate_threshold = replicate_threshold
        #: Upstream names whose copy onto one more engine is under way.
        self.replicating: set[str] = set()
        self.records: dict[str, AdapterRecord] = {}
        #: Names to load after a (re)start -> priority (wall time of the last wish).
        self.wanted: dict[str, float] = {}
        #: Names whose delete waits for requests in flight: nothing new starts on them.
        self.deleting: set[str] = set()
        self.closed = False
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def lock(self, name: str) -> asyncio.Lock:
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    def locked(self, name: str) -> bool:
        lock = self._locks.get(name)
        return lock is not None and lock.locked()

    def get(self, name: str) -> AdapterRecord:
        record = self.records.get(name)
        if record is None:
            raise AdapterNotFoundError(f"no adapter named {name!r} is registered", param="name")
        return record

    def pinned(self, slot: Slot) -> bool:
        record = self.records.get(slot.name)
        return (
            record is not None
            and record.pinned
            and not slot.retiring
            and record.active_version == slot.version
        )

    # --- tasks -----------------------------------------------------------------------------
    def spawn(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run ``work`` in a task of its own, cancelled only by :meth:`cancel_all` (close)."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: its awaiter may have gone; it reported it already

    async def shielded(self, work: Coroutine[Any, Any, T]) -> T:
        """Await ``work`` run in its own task: cancelling the caller does not cancel it."""
        return await asyncio.shield(self.spawn(work))

    async def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def view(self, name: str) -> AdapterView:
        """``name``'s registry record with the live state of each version."""
        record = self.get(name)
        versions = []
        for version in record.versions:
            slot = self.table.get(version.upstream_name)
            failure = self.failures.get(version.upstream_name)
            versions.append(
                VersionView.of(
                    version,
                    slot.state if slot is not None else None,
                    failure.reason if failure is not None else None,
                    refused=failure is not None and failure.refused,
                    leases=slot.leases if slot is not None else 0,
                    engines=tuple(self.table.current_engines(slot)) if slot is not None else (),
                )
            )
        return AdapterView(record=record, versions=tuple(versions))

    # --- the registry ----------------------------------------------------------------------
    async def persist(
        self, name: str, version: int, state: AdapterState, error: str | None = None
    ) -> None:
        try:
            await asyncio.to_thread(self.registry.set_state, name, version, state, error)
        except (GatewayError, AdapterError) as exc:  # live state is right; the record catches up
            logger.error(
                "could not record adapter %s v%d as %s: %s", name, version, state, exc.message
            )
