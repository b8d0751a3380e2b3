"""The adapter slot table: which adapter versions occupy the engines' LoRA slots, and who uses
them. Pure bookkeeping, no I/O: the lifecycle (:mod:`gateway.lifecycle.lease`,
:mod:`gateway.lifecycle.loader`) decides and does the engine I/O, this module counts.

A :class:`Slot` is one adapter version that is loading, loaded or unloading, with the engines
that hold it (each with its restart count at load time, so a restarted engine that forgot the
adapter is never routed to), its in-flight leases and its last use. :class:`SlotTable` holds at
most ``capacity`` of them, picks eviction victims (least recently used, never pinned, leased or
locked) and wakes loads that wait for a slot to free up.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from adapters.state import AdapterState, check_transition
from gateway.engines.base import Engine


@dataclass(eq=False, slots=True)
class Slot:
    name: str
    version: int
    upstream: str
    path: str
    state: AdapterState
    last_used: float
    #: engine name -> that engine's restart count when it loaded this version.
    engines: dict[str, int] = field(default_factory=dict)
    leases: int = 0
    #: False while an unload waits for in-flight requests: no new lease is handed out.
    accepting: bool = True
    #: An old version after a swap, to unload once drained.
    retiring: bool = False
    #: An admin unload or delete waits for this slot's leases to end (no new lease meanwhile).
    draining: bool = False
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    #: The engine load or unload in progress (:mod:`gateway.lifecycle.loader`), if any.
    job: asyncio.Task[None] | None = None

    @property
    def busy(self) -> bool:
        """An engine load or unload of this slot is still running."""
        return self.job is not None and not self.job.done()

    def transition(self, new: AdapterState) -> None:
        self.state = check_transition(self.state, new)


class SlotTable:
    def __init__(
        self, engines: Sequence[Engine], capacity: int, clock: Callable[[], float]
    ) -> None:
        if capacity < 1:
            raise ValueError(f"adapter capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._engines = {engine.name: engine for engine in engines}
        self._slots: dict[str, Slot] = {}
        self._clock = clock
        self._turn = itertools.count()
        #: Set (and replaced) whenever a lease ends or a slot goes: wakes loads waiting for room.
        self._freed = asyncio.Event()

    def get(self, upstream: str) -> Slot | None:
        return self._slots.get(upstream)

    def __iter__(self) -> Iterator[Slot]:
        return iter(list(self._slots.values()))

    def __len__(self) -> int:
        return len(self._slots)

    @property
    def full(self) -> bool:
        return len(self._slots) >= self.capacity

    def holds(self, slot: Slot) -> bool:
        return self._slots.get(slot.upstream) is slot

    def open(self, name: str, version: int, upstream: str, path: str) -> Slot:
        """A new slot in LOADING state (the caller made room first)."""
        slot = Slot(
            name=name,
            version=version,
            upstream=upstream,
            path=path,
            state=AdapterState.REGISTERED,
            last_used=self._clock(),
        )
        slot.transition(AdapterState.LOADING)
        slot.drained.set()
        self._slots[upstream] = slot
        return slot

    def remove(self, slot: Slot) -> None:
        if self._slots.get(slot.upstream) is slot:
            del self._slots[slot.upstream]
        slot.drained.set()
        self._notify_freed()

    # --- leases ------------------------------------------------------------------------------
    def take(self, slot: Slot) -> None:
        slot.leases += 1
        slot.drained.clear()
        slot.last_used = self._clock()

    def release(self, slot: Slot) -> None:
        slot.leases -= 1
        if slot.leases == 0:
            slot.drained.set()
            self._notify_freed()

    def _notify_freed(self) -> None:
        self._freed.set()
        self._freed = asyncio.Event()

    def notify(self) -> None:
        """Wake every waiter of :meth:`wait_freed` (e.g. a drain ended or was given up)."""
        self._notify_freed()

    async def wait_freed(self, timeout_s: float) -> bool:
        """Wait until a lease ends, a slot goes or :meth:`notify`; False on timeout."""
        try:
            await asyncio.wait_for(self._freed.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    # --- engines -----------------------------------------------------------------------------
    def current_engines(self, slot: Slot) -> list[str]:
        """Engines that are ready and have not restarted since they loaded ``slot``."""
        current = []
        for engine_name, restarts in slot.engines.items():
            engine = self._engines[engine_name]
            if engine.ready and engine.status().restarts == restarts:
                current.append(engine_name)
        return current

    def pick_engine(self, slot: Slot, prefer: str | None = None) -> Engine | None:
        """A ready engine holding the loaded ``slot`` (round-robin; only ``prefer`` when
        given), or None."""
        if slot.state is not AdapterState.LOADED:
            return None
        current = self.current_engines(slot)
        if prefer is not None:
            return self._engines[prefer] if prefer in current else None
        if not current:
            return None
        return self._engines[current[next(self._turn) % len(current)]]

    def loaded_per_engine(self) -> Mapping[str, int]:
        counts = dict.fromkeys(self._engines, 0)
        for slot in self._slots.values():
            for engine_name in self.current_engines(slot):
                counts[engine_name] += 1
        return counts

    def forget_engine(self, engine_name: str) -> list[Slot]:
        """The engine restarted with nothing loaded; returns the loaded slots no engine holds."""
        orphans = []
        for slot in self._slots.values():
            slot.engines.pop(engine_name, None)
            if not slot.engines and slot.state is AdapterState.LOADED:
                orphans.append(slot)
        return orphans

    # --- eviction ----------------------------------------------------------------------------
    def evictable(self, slot: Slot, pinned: Callable[[Slot], bool]) -> bool:
        return (
            self.holds(slot)
            and slot.state is AdapterState.LOADED
            and slot.leases == 0
            and not pinned(slot)
        )

    def pick_victim(
        self, own_name: str, pinned: Callable[[Slot], bool], locked: Callable[[str], bool]
    ) -> Slot | None:
        """Retiring versions first, then the least recently used. Never a slot whose name is
        locked by another operation, except the caller's own retiring versions (the caller
        holds that name's lock)."""
        candidates = [
            slot
            for slot in self._slots.values()
            if self.evictable(slot, pinned)
            and (
                (slot.name == own_name and slot.retiring)
                or (slot.name != own_name and not locked(slot.name))
            )
        ]
        if not candidates:
            return None
        return min(candidates, key=lambda s: (not s.retiring, s.last_used))
