"""The request path of the adapter lifecycle: lease an adapter's active version for one request.

:class:`LeaseBroker` implements the ``lease`` of :class:`gateway.inference.routing.AdapterResolver`
for :class:`gateway.lifecycle.service.AdapterLifecycle`. A loaded adapter is leased with no lock
and no await. Otherwise the request takes the name's lock, settles any load or unload in
progress, makes room (evicting the least recently used loaded version that is not pinned, not
leased and not locked) and loads the version (:mod:`gateway.lifecycle.loader`, shielded from the
request), then takes its lease before letting the lock go. When no slot can be freed, or the
version drains for an admin unload or delete, it lets the lock go and waits, up to
``slot_wait_s`` of its own, for a lease to end or a slot to go, then tries again: requests that
wait do so side by side, never one behind another's lock.

Where it loads is the placement policy's choice (:mod:`gateway.placement.policy`): under
``replicate`` on every ready engine; under ``affinity`` on one engine (least loaded with a free
slot, else evicting the stalest idle version of the least loaded engine), copied onto a second
one in the background when it runs hot. Requests go to the least loaded engine holding it;
``exclude`` keeps a request off engines that just failed it (failover, loading there if needed).

The admin ``load`` and the restart recovery use :meth:`LeaseBroker.ensure_loaded` (one try,
under the lock) and :meth:`LeaseBroker.load` (tries until loaded or out of time).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager
from typing import Any

from adapters.registry import AdapterRecord, AdapterVersion
from adapters.state import AdapterState
from gateway.engines.base import Engine
from gateway.errors import CapacityError, EngineUnavailableError, GatewayError, ModelNotFoundError
from gateway.inference.routing import Route, unknown_model
from gateway.lifecycle.context import LifecycleContext
from gateway.lifecycle.loader import EngineLoader
from gateway.lifecycle.types import UnloadCause
from gateway.placement.board import PlacementTaken
from gateway.placement.policy import (
    LoadPlan,
    PlacementPolicy,
    Snapshot,
    choose_load,
    choose_replica,
)
from gateway.placement.slots import Slot
from gateway.placement.stats import PlacementEvent

logger = logging.getLogger(__name__)

#: With a shared placement board, how often a waiting request looks again without a wake-up.
SHARED_RECHECK_S = 0.25
#: How often a hot version asks the placement policy again for a copy on one engine more.
REPLICA_RECHECK_S = 0.05


def _wanted(record: AdapterRecord, number: int | None) -> AdapterVersion:
    """The active version, or version ``number`` (404 when it is gone)."""
    if number is None:
        return record.active
    found = record.version(number)
    if found is None:
        raise ModelNotFoundError(
            f"adapter {record.name!r} has no version {number} (an alias names it)",
            param="model",
        )
    return found


class LeaseBroker:
    def __init__(self, ctx: LifecycleContext, loader: EngineLoader) -> None:
        self._ctx = ctx
        self._loader = loader

    @asynccontextmanager
    async def lease(
        self,
        name: str,
        *,
        engine: str | None = None,
        version: int | None = None,
        exclude: Collection[str] = (),
    ) -> AsyncIterator[Route]:
        """Hold ``name``'s active version (or ``version``, an alias's target) loaded (not
        evictable) while the block runs; on ``engine`` when given (a continued response lives
        in that engine's memory only), never on an engine in ``exclude`` (it just failed this
        request)."""
        if engine is not None:  # only there: every other engine is out
            exclude = {e.name for e in self._ctx.engines if e.name != engine}
        slot, picked = await self._acquire(name, exclude, engine, version)
        try:
            yield Route(
                engine=picked,
                upstream_model=slot.upstream,
                public_model=name,
                adapter=name,
                sampling_defaults=self._sampling_defaults_of(name, slot.upstream),
                version=slot.version,
            )
        finally:
            self._ctx.table.release(slot, picked.name)

    def _sampling_defaults_of(self, name: str, upstream: str) -> dict[str, Any] | None:
        """The leased version's defaults (its manifest's, or what the admin API set)."""
        record = self._ctx.records.get(name)
        if record is None:
            return None
        version = next((v for v in record.versions if v.upstream_name == upstream), None)
        return version.sampling_defaults if version is not None else None

    async def _acquire(
        self,
        name: str,
        exclude: Collection[str],
        prefer: str | None = None,
        number: int | None = None,
    ) -> tuple[Slot, Engine]:
        ctx = self._ctx
        deadline = ctx.clock() + ctx.slot_wait_s
        event = PlacementEvent.HIT
        while True:
            record = ctx.records.get(name)
            if record is None:
                raise unknown_model(name)
            wanted = _wanted(record, number)
            # Fast path, no lock and no await: the version is loaded on a current engine.
            slot = ctx.table.get(wanted.upstream_name)
            engine = (
                ctx.table.pick_engine(slot, exclude, prefer)
                if slot is not None and slot.accepting
                else None
            )
            if slot is not None and engine is not None:
                self._take(slot, engine, event)
                return slot, engine
            event = PlacementEvent.MISS
            if name not in ctx.deleting:
                async with ctx.lock(name):
                    record = ctx.records.get(name)
                    if record is None:
                        raise unknown_model(name)
                    wanted = _wanted(record, number)
                    slot = (
                        None if name in ctx.deleting else await self.ensure_loaded(wanted, exclude)
                    )
                    if slot is not None:
                        engine = ctx.table.pick_engine(slot, exclude, prefer)
                        if engine is not None:
                            self._take(slot, engine, event)
                            return slot, engine
                        if prefer is not None or not ctx.board.shared:
                            where = f"engine {prefer}" if prefer is not None else "no ready engine"
                            raise EngineUnavailableError(f"{where} holds adapter {name!r}")
                        # Another replica began draining it there just now: wait, plan again.
            await self._wait(name, deadline)

    def _take(self, slot: Slot, engine: Engine, event: PlacementEvent) -> None:
        table = self._ctx.table
        table.take(slot, engine.name)
        table.stats.count(engine.name, event)
        if table.policy is PlacementPolicy.AFFINITY:
            self._maybe_replicate(slot)

    # --- replication of hot versions (affinity) --------------------------------------------
    def _maybe_replicate(self, slot: Slot) -> None:
        ctx = self._ctx
        if slot.upstream in ctx.replicating or slot.busy or ctx.closed:
            return
        # The policy's own first tests, on this slot alone: hot on every engine holding it, and
        # a ready engine without it. Then the policy, at most every REPLICA_RECHECK_S: its
        # snapshot walks every slot, and with 1,000 resident adapters taking one on each
        # request was three quarters of the gateway's CPU (and, once requests queued and
        # every version looked hot, the more it queued the slower it got).
        holders = ctx.table.current_engines(slot)
        if (
            not holders
            or any(slot.in_flight.get(name, 0) < ctx.replicate_threshold for name in holders)
            or sum(1 for engine in ctx.engines if engine.ready) <= len(holders)
        ):
            return
        now = ctx.clock()
        if now - slot.replica_checked_at < REPLICA_RECHECK_S:
            return
        slot.replica_checked_at = now
        if choose_replica(self._snapshot(slot.name), slot.upstream, ctx.replicate_threshold):
            ctx.replicating.add(slot.upstream)
            ctx.spawn(self._replicate(slot.name, slot.upstream))

    async def _replicate(self, name: str, upstream: str) -> None:
        ctx = self._ctx
        try:
            async with ctx.lock(name):
                slot = ctx.table.get(upstream)
                if slot is None or slot.state is not AdapterState.LOADED or not slot.accepting:
                    return
                plan = choose_replica(self._snapshot(name), upstream, ctx.replicate_threshold)
                if plan is not None and plan.evict is not None:
                    await self._evict(plan, name)
                    plan = choose_replica(self._snapshot(name), upstream, ctx.replicate_threshold)
                if plan is None or plan.evict is not None or ctx.table.get(upstream) is not slot:
                    return
                if await self._loader.add_engine(slot, ctx.by_name[plan.engine]):
                    ctx.table.stats.count(plan.engine, PlacementEvent.REPLICATION)
        except GatewayError as exc:
            logger.warning("replicating adapter %s failed: %s", upstream, exc.message)
        finally:
            ctx.replicating.discard(upstream)

    async def load(self, name: str) -> None:
        """Load ``name``'s active version, waiting up to ``slot_wait_s`` for a free slot."""
        ctx = self._ctx
        deadline = ctx.clock() + ctx.slot_wait_s
        while True:
            async with ctx.lock(name):
                if await self.ensure_loaded(ctx.get(name).active) is not None:
                    return
            await self._wait(name, deadline)

    async def _wait(self, name: str, deadline: float) -> None:
        """Wait (holding no lock) until a lease ends or a slot goes; raise when out of time.

        With other replicas (a shared board) a slot may also free up elsewhere, seen by the
        sync loop at any moment, even between a failed try and this wait: so it looks again
        at least every ``SHARED_RECHECK_S`` instead of sleeping through such a change."""
        ctx = self._ctx
        remaining = deadline - ctx.clock()
        if remaining <= 0:
            raise self._wait_error(name)
        step = min(remaining, SHARED_RECHECK_S) if ctx.board.shared else remaining
        if not await ctx.table.wait_freed(step) and ctx.clock() >= deadline:
            raise self._wait_error(name)

    def _wait_error(self, name: str) -> CapacityError:
        record = self._ctx.records.get(name)
        slot = self._ctx.table.get(record.active.upstream_name) if record is not None else None
        if name in self._ctx.deleting or (slot is not None and slot.draining):
            return CapacityError(
                f"adapter {name!r} is being unloaded once its requests in flight finish; "
                "retry shortly",
                headers={"Retry-After": "1"},
            )
        return self.capacity_error(name)

    # --- under the name's lock -------------------------------------------------------------
    async def ensure_loaded(
        self, version: AdapterVersion, exclude: Collection[str] = ()
    ) -> Slot | None:
        """One try to have ``version`` loaded where the policy places it (replicate: every ready
        engine; affinity: at least one ready engine not in ``exclude``); the caller holds its
        name's lock. Its slot, or None when it must wait (no free slot, or draining)."""
        ctx = self._ctx
        slot = ctx.table.get(version.upstream_name)
        while slot is not None and slot.busy:
            await self._loader.settle(slot)
            slot = ctx.table.get(version.upstream_name)
        ctx.failures.check(version)
        ready = [engine for engine in ctx.engines if engine.ready and engine.name not in exclude]
        if not ready:
            raise EngineUnavailableError("no engine is ready to load adapters")
        if ctx.table.policy is PlacementPolicy.AFFINITY:
            return await self._ensure_placed(version, slot, exclude)
        if slot is not None:
            if slot.draining:
                return None
            slot.accepting = True
            slot.retiring = False
            current = ctx.table.current_engines(slot)
            missing = [e for e in ready if e.name not in current]
            if not missing:
                return slot
            slot.transition(AdapterState.LOADING)
        else:
            slot = await self._reserve(version)
            if slot is None:
                return None
            missing = ready
        try:
            await self._loader.load(slot, missing)
        except PlacementTaken:
            return None  # every engine's place is another replica's now: wait, then again
        return slot

    async def _ensure_placed(
        self, version: AdapterVersion, slot: Slot | None, exclude: Collection[str]
    ) -> Slot | None:
        """Affinity: resident on one usable engine, else loaded onto the policy's choice."""
        ctx = self._ctx
        if slot is not None:
            if slot.draining:
                return None
            slot.accepting = True
            slot.retiring = False
            usable = [n for n in ctx.table.current_engines(slot) if n not in exclude]
            if usable and slot.state is AdapterState.LOADED:
                return slot
        tried = set(exclude)
        while True:
            plan = await self._make_room(version, tried)
            if plan is None:
                return None
            engine = ctx.by_name[plan.engine]
            slot = ctx.table.get(version.upstream_name)
            if slot is None:
                slot = ctx.table.open(
                    version.name, version.version, version.upstream_name, version.load_path
                )
            elif slot.state is AdapterState.LOADED and ctx.table.current_engines(slot):
                # Resident only on excluded engines (failover): one engine more.
                await self._loader.add_engine(slot, engine)
                return slot
            else:
                slot.transition(AdapterState.LOADING)
            slot.loading_on.add(engine.name)  # reserved before any await
            try:
                await self._loader.load(slot, [engine])
            except PlacementTaken:
                # Another gateway replica holds that place (shared board): wait for a slot
                # to free (the sync loop re-reads the board now), then plan again.
                return None
            except EngineUnavailableError:
                # That engine is gone (or failing): once more on another one, if any.
                tried.add(engine.name)
                others = [e for e in ctx.engines if e.ready and e.name not in tried]
                if len(tried) > len(exclude) + 1 or not others:
                    raise
                ctx.failures.clear(version.upstream_name)
                continue
            return slot

    def _snapshot(self, own_name: str) -> Snapshot:
        ctx = self._ctx
        return ctx.table.snapshot(
            lambda s: (
                not s.busy
                and ctx.table.evictable(s, ctx.pinned)
                and (
                    (s.name == own_name and s.retiring)
                    or (s.name != own_name and not ctx.locked(s.name))
                )
            )
        )

    async def _make_room(
        self, version: AdapterVersion, exclude: Collection[str]
    ) -> LoadPlan | None:
        """Affinity: an engine with a free slot for ``version``, evicting as the policy says;
        None when every slot of every usable engine is busy now."""
        ctx = self._ctx
        while True:
            plan = choose_load(self._snapshot(version.name), version.upstream_name, exclude)
            if plan is None:
                if ctx.table.full and self._all_pinned():
                    raise self.capacity_error(version.name)
                return None
            if plan.evict is None:
                return plan
            await self._evict(plan, version.name)

    async def _evict(self, plan: LoadPlan, own_name: str) -> None:
        """Free ``plan.evict``'s slot on ``plan.engine`` (under the victim name's lock)."""
        ctx = self._ctx
        victim = ctx.table.get(plan.evict) if plan.evict is not None else None
        if victim is None:
            return
        if victim.name == own_name:  # our own old version: we hold its lock
            await self._loader.drop_from(victim, plan.engine, UnloadCause.REPLACED)
            return
        async with ctx.lock(victim.name):
            if ctx.table.evictable(victim, ctx.pinned) and not victim.busy:
                await self._loader.drop_from(victim, plan.engine, UnloadCause.EVICTED)

    async def _reserve(self, version: AdapterVersion) -> Slot | None:
        """A new LOADING slot for ``version``, evicting LRU adapters until one fits; None when
        none can go now (every slot leased or locked)."""
        ctx = self._ctx
        while ctx.table.full:
            if self._all_pinned():
                raise self.capacity_error(version.name)
            victim = ctx.table.pick_victim(version.name, ctx.pinned, ctx.locked)
            if victim is None:
                return None
            if victim.name == version.name:  # our own old version: we hold its lock
                await self._loader.unload(victim, UnloadCause.REPLACED)
            else:
                async with ctx.lock(victim.name):
                    if ctx.table.evictable(victim, ctx.pinned):
                        await self._loader.unload(victim, UnloadCause.EVICTED)
        return ctx.table.open(
            version.name, version.version, version.upstream_name, version.load_path
        )

    def _all_pinned(self) -> bool:
        """Every slot holds a pinned version: waiting cannot help. Never so with other
        replicas (a shared board): this one's view of the pins and places is up to a sync
        interval old, and an unpin or an unload made through another may free a slot any
        moment; the request waits its ``slot_wait_s`` like any other."""
        ctx = self._ctx
        return not ctx.board.shared and all(ctx.pinned(s) for s in ctx.table)

    def capacity_error(self, name: str) -> CapacityError:
        ctx = self._ctx
        busy = ", ".join(
            f"{s.upstream} ({'pinned' if ctx.pinned(s) else s.state}, {s.leases} in flight)"
            for s in ctx.table
        )
        return CapacityError(
            f"no adapter slot is free for {name!r}: all {ctx.table.capacity} are in use; "
            "retry shortly",
            headers={"Retry-After": "1"},
            detail=f"slots: {busy}; unpin an adapter or raise LORA_GATEWAY_MAX_CPU_LORAS",
        )
