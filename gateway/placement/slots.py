"""The adapter slot table: which adapter versions occupy the engines' LoRA slots, and who uses
them. Pure bookkeeping, no I/O: the lifecycle (:mod:`gateway.lifecycle.lease`,
:mod:`gateway.lifecycle.loader`) decides and does the engine I/O, this module counts.

A :class:`Slot` is one adapter version that is loading, loaded or unloading, with the engines
that hold it (each with its restart count at load time, so a restarted engine that forgot the
adapter is never routed to), the engines it is loading onto, its in-flight leases (per engine)
and its last use. :class:`SlotTable` holds each engine's own slots (its ``lora_capacity``, or the
``capacity`` given), counts the gateway's requests in flight per engine (:class:`EngineLoad`),
builds the :class:`~gateway.placement.policy.Snapshot` the placement policy decides on, picks
eviction victims (least recently used, never pinned, leased or locked) and wakes loads that wait
for a slot to free up. An engine that is not ready (or restarted since) holds nothing here.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from adapters.state import AdapterState, check_transition
from gateway.engines.base import Engine
from gateway.placement.policy import (
    EngineView,
    PlacementPolicy,
    Snapshot,
    Victim,
    adapter_capacity,
    choose_route,
)
from gateway.placement.stats import PlacementStats


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
    #: Engines a load onto is in progress (they count as occupied).
    loading_on: set[str] = field(default_factory=set)
    #: Engines where another gateway replica drains this version (shared placement board):
    #: still held there, but no new request goes there.
    blocked: set[str] = field(default_factory=set)
    leases: int = 0
    #: engine name -> leases routed there.
    in_flight: dict[str, int] = field(default_factory=dict)
    #: False while an unload waits for in-flight requests: no new lease is handed out.
    accepting: bool = True
    #: An old version after a swap, to unload once drained.
    retiring: bool = False
    #: An admin unload or delete waits for this slot's leases to end (no new lease meanwhile).
    draining: bool = False
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    #: The engine load or unload in progress (:mod:`gateway.lifecycle.loader`), if any.
    job: asyncio.Task[Any] | None = None
    #: When the placement policy was last asked whether to copy this version to one engine
    #: more (it was hot); asked again no sooner than ``REPLICA_RECHECK_S`` after.
    replica_checked_at: float = float("-inf")

    @property
    def busy(self) -> bool:
        """An engine load or unload of this slot is still running."""
        return self.job is not None and not self.job.done()

    def transition(self, new: AdapterState) -> None:
        self.state = check_transition(self.state, new)


class EngineLoad:
    """The gateway's own requests in flight per engine (base model and adapters)."""

    def __init__(self, engine_names: Sequence[str]) -> None:
        self.counts: dict[str, int] = dict.fromkeys(engine_names, 0)

    def take(self, engine_name: str) -> None:
        self.counts[engine_name] = self.counts.get(engine_name, 0) + 1

    def release(self, engine_name: str) -> None:
        self.counts[engine_name] -= 1


class SlotTable:
    def __init__(
        self,
        engines: Sequence[Engine],
        capacity: int | None,
        clock: Callable[[], float],
        *,
        policy: PlacementPolicy = PlacementPolicy.REPLICATE,
        load: EngineLoad | None = None,
    ) -> None:
        """``capacity``: each engine's slot count (default: its ``lora_capacity``)."""
        if capacity is not None and capacity < 1:
            raise ValueError(f"adapter capacity must be at least 1, got {capacity}")
        self.policy = policy
        self.engine_capacity = {e.name: capacity or e.lora_capacity for e in engines}
        self.capacity = adapter_capacity(policy, list(self.engine_capacity.values()))
        self.load = load or EngineLoad([e.name for e in engines])
        self.stats = PlacementStats()
        #: Engine name -> slots there taken by places this table has no slot for: another
        #: gateway replica's load in progress, or a version this replica does not know yet
        #: (set by the replica sync, :mod:`gateway.lifecycle.replicas`; empty when alone).
        self.external: dict[str, int] = {}
        self._engines = {engine.name: engine for engine in engines}
        self._turn = itertools.count()
        self._slots: dict[str, Slot] = {}
        self._clock = clock
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
        """No new version fits without an eviction (affinity: on no ready engine)."""
        if self.policy is PlacementPolicy.REPLICATE:
            return len(self._slots) >= self.capacity
        used = self.used_per_engine()
        return all(
            used[name] >= cap
            for name, cap in self.engine_capacity.items()
            if self._engines[name].ready
        )

    def occupies(self, slot: Slot, engine_name: str) -> bool:
        """``slot`` takes one of ``engine_name``'s slots: loaded there (current) or loading."""
        return (
            engine_name in slot.loading_on
            or engine_name in slot.blocked
            or engine_name in self.current_engines(slot)
        )

    def used_per_engine(self) -> dict[str, int]:
        """Engine name -> slots taken there (loaded or loading)."""
        used = {name: self.external.get(name, 0) for name in self._engines}
        for slot in self._slots.values():
            for name in self._engines:
                if self.occupies(slot, name):
                    used[name] += 1
        return used

    def snapshot(
        self,
        victim_ok: Callable[[Slot], bool] | None = None,
    ) -> Snapshot:
        """What the placement policy sees now; ``victim_ok`` says which idle slots may go."""
        views = []
        for name, engine in self._engines.items():
            held = [s for s in self._slots.values() if self.occupies(s, name)]
            victims = tuple(
                Victim(s.upstream, float("-inf") if s.retiring else s.last_used)
                for s in held
                if victim_ok is not None
                and name in s.engines
                and name not in s.loading_on
                and name not in s.blocked
                and victim_ok(s)
            )
            views.append(
                EngineView(
                    name=name,
                    ready=engine.ready,
                    capacity=max(0, self.engine_capacity[name] - self.external.get(name, 0)),
                    in_flight=self.load.counts.get(name, 0),
                    resident=frozenset(s.upstream for s in held),
                    adapter_in_flight={s.upstream: s.in_flight.get(name, 0) for s in held},
                    victims=victims,
                )
            )
        return Snapshot(tuple(views))

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
    def take(self, slot: Slot, engine_name: str | None = None) -> None:
        slot.leases += 1
        slot.drained.clear()
        slot.last_used = self._clock()
        if engine_name is not None:
            slot.in_flight[engine_name] = slot.in_flight.get(engine_name, 0) + 1
            self.load.take(engine_name)

    def release(self, slot: Slot, engine_name: str | None = None) -> None:
        if engine_name is not None:
            slot.in_flight[engine_name] -= 1
            self.load.release(engine_name)
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
            if (
                engine.ready
                and engine.status().restarts == restarts
                and engine_name not in slot.blocked
            ):
                current.append(engine_name)
        return current

    def pick_engine(
        self, slot: Slot, exclude: Collection[str] = (), prefer: str | None = None
    ) -> Engine | None:
        """The least loaded ready engine holding the loaded ``slot`` (not in ``exclude``; only
        ``prefer`` when given), or None (:func:`gateway.placement.policy.choose_route`)."""
        if slot.state is not AdapterState.LOADED:
            return None
        current = [name for name in self.current_engines(slot) if name not in exclude]
        if prefer is not None:
            return self._engines[prefer] if prefer in current else None
        if not current:
            return None
        turn = next(self._turn) % len(current)  # ties rotate
        current = current[turn:] + current[:turn]
        view = Snapshot(
            tuple(
                EngineView(
                    name, True, 0, self.load.counts.get(name, 0), frozenset((slot.upstream,))
                )
                for name in current
            )
        )
        chosen = choose_route(view, slot.upstream)
        return self._engines[chosen] if chosen is not None else None

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
