"""Gateway replicas behaving as one: the sync loop that keeps this replica in step with the
others through the registry database.

Built by :class:`gateway.lifecycle.service.AdapterLifecycle` when its placement board is shared
(:class:`gateway.placement.board.SharedBoard`: PostgreSQL, or ``serve --workers``). Every
``interval_s`` (and at once when the lease path asks, :meth:`ReplicaSync.wake`), one tick:

1. **Registry**: when the registry's generation moved (another replica registered, versioned,
   restored, pinned, unpinned or deleted an adapter), re-read the records into
   ``ctx.records``: the next request sees the change. Names whose lock a local operation holds
   are left for the next tick.
2. **Placements**: mirror the board onto the slot table: versions other replicas loaded become
   resident here (requests for them are hits, no load); places another replica is draining stop
   taking requests at once; places gone from the board leave the table.
3. **Heartbeat**: this replica's ``seen_seq`` (everything up to it is applied) and its holds
   (places with requests in flight). A draining replica waits for exactly these two.
4. **Housekeeping**: dead replicas' half-done loads and drains are given back; versions nobody
   registered any more (deleted through another replica) are unloaded from the engines; every
   ``reconcile_every_s`` the rows of each ready engine are checked against what it lists.

The request path reads only the slot table: no database round trip for a resident adapter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

from adapters.errors import AdapterError
from adapters.registry import AdapterRecord, AdapterVersion
from adapters.state import AdapterState
from gateway.engines.base import Engine
from gateway.errors import GatewayError
from gateway.lifecycle.context import LifecycleContext
from gateway.lifecycle.loader import EngineLoader
from gateway.placement.board import BoardView, SharedBoard, hold_key
from gateway.placement.board_rows import PlacementState

logger = logging.getLogger(__name__)

#: Rows of versions nobody registers are unloaded only when older than the registry read by
#: this much (wall clocks of replicas may differ a little).
ORPHAN_MARGIN_S = 2.0


@dataclass(frozen=True, slots=True)
class ReplicaView:
    id: str
    this: bool
    live: bool
    heartbeat_age_s: float
    holds: int


class ReplicaSync:
    def __init__(
        self,
        ctx: LifecycleContext,
        board: SharedBoard,
        loader: EngineLoader,
        *,
        interval_s: float = 0.5,
        reconcile_every_s: float = 10.0,
    ) -> None:
        self._ctx = ctx
        self._board = board
        self._loader = loader
        self.interval_s = interval_s
        self.reconcile_every_s = reconcile_every_s
        self._wake = asyncio.Event()
        self._generation = -1
        #: Wall time of the registry read ``ctx.records`` reflects (None: not read yet).
        self._records_as_of: float | None = None
        self._last_reconcile = time.monotonic()
        self._collecting: asyncio.Task[None] | None = None
        self.ticks = 0

    # --- the loop ---------------------------------------------------------------------------
    async def run(self) -> None:
        while not self._ctx.closed:
            try:
                await self.tick()
            except (GatewayError, AdapterError) as exc:
                logger.warning("replica sync: %s", exc.message)
            except Exception:
                logger.exception("replica sync failed; trying again")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)

    def wake(self) -> None:
        """Tick now (a claim found the board ahead of this replica's view)."""
        self._wake.set()

    async def tick(self) -> None:
        view = await self._board.read()
        await self._refresh_records()
        if self._mirror(view):
            self._ctx.table.notify()
        await self._board.heartbeat(view.seq, self._holds())
        if await self._board.expire_dead(view):
            self.wake()
        self._collect_orphans(view)
        if time.monotonic() - self._last_reconcile >= self.reconcile_every_s:
            self._last_reconcile = time.monotonic()
            for engine in self._ctx.engines:
                if engine.ready:
                    await self.reconcile(engine)
        self.ticks += 1

    # --- 1. the registry --------------------------------------------------------------------
    async def _refresh_records(self) -> None:
        ctx = self._ctx
        read_at = time.time()
        generation = await asyncio.to_thread(ctx.registry.generation)
        if generation == self._generation:
            self._records_as_of = read_at
            return
        fresh = {r.name: r for r in await asyncio.to_thread(ctx.registry.list)}
        skipped = False
        for name in list(ctx.records):
            if name not in fresh and name not in ctx.deleting:
                if ctx.locked(name):
                    skipped = True
                    continue
                del ctx.records[name]
                ctx.wanted.pop(name, None)
                logger.info("adapter %s deleted through another replica", name)
        for name, record in fresh.items():
            if ctx.locked(name) or name in ctx.deleting:
                skipped = True
                continue
            old = ctx.records.get(name)
            ctx.records[name] = record
            if old is None:
                logger.info("adapter %s registered through another replica", name)
            elif old.active_version != record.active_version:
                logger.info(
                    "adapter %s: version %d active (through another replica)",
                    name,
                    record.active_version,
                )
        if not skipped:
            self._generation = generation
            self._records_as_of = read_at
        ctx.table.notify()

    def _versions(self) -> dict[str, tuple[AdapterRecord, AdapterVersion]]:
        return {
            version.upstream_name: (record, version)
            for record in self._ctx.records.values()
            for version in record.versions
        }

    # --- 2. placements ----------------------------------------------------------------------
    def _mirror(self, view: BoardView) -> bool:
        """Apply ``view`` to the slot table; True when anything changed."""
        ctx, table, board = self._ctx, self._ctx.table, self._board
        by_url: Mapping[str, Engine] = {engine.url: engine for engine in ctx.engines}
        places: dict[str, dict[str, str]] = {}  # upstream -> engine name -> state
        for placement in view.placements:
            engine = by_url.get(placement.engine)
            if engine is not None:
                places.setdefault(placement.upstream, {})[engine.name] = (
                    PlacementState.DRAINING
                    if placement.state == PlacementState.DRAINING
                    and placement.owner != board.replica_id
                    else placement.state
                )
        used_elsewhere = {key for r in view.replicas if r.id != board.replica_id for key in r.holds}
        changed = False

        def fresh(engine: Engine, upstream: str) -> bool:
            return not board.touched_since(engine.url, upstream, view.read_at)

        for slot in table:
            mine = places.get(slot.upstream, {})
            for engine_name in list(slot.engines):
                engine = ctx.by_name[engine_name]
                if engine_name not in mine and engine_name not in slot.loading_on:
                    if fresh(engine, slot.upstream):
                        del slot.engines[engine_name]  # unloaded by another replica
                        slot.blocked.discard(engine_name)
                        changed = True
            for engine_name in list(slot.blocked):
                if engine_name not in mine:
                    # The drained place is gone. A mark set while the slot did not list that
                    # engine (the place seen only draining, never loaded) would stay for good
                    # if this only followed the engines the slot lists.
                    slot.blocked.discard(engine_name)
                    changed = True
            for engine_name, state in mine.items():
                blocked = state == PlacementState.DRAINING
                if blocked != (engine_name in slot.blocked):
                    (slot.blocked.add if blocked else slot.blocked.discard)(engine_name)
                    changed = True
                if hold_key(ctx.by_name[engine_name].url, slot.upstream) in used_elsewhere:
                    slot.last_used = ctx.clock()  # others use it: not the stalest
            if (
                not slot.engines
                and not slot.loading_on
                and slot.leases == 0
                and not slot.busy
                and slot.state is AdapterState.LOADED
            ):
                table.remove(slot)  # held by no engine any more
                slot.transition(AdapterState.UNLOADING)
                slot.transition(AdapterState.REGISTERED)
                changed = True
        versions = self._versions()
        for upstream, engines in places.items():
            known = versions.get(upstream)
            if known is None:
                continue
            record, version = known
            for engine_name, state in engines.items():
                engine = ctx.by_name[engine_name]
                if state != PlacementState.LOADED or not engine.ready:
                    continue
                held = table.get(upstream)
                if held is not None and (engine_name in held.engines or held.busy):
                    continue
                if not fresh(engine, upstream) or record.name in ctx.deleting:
                    continue
                if held is None:
                    held = table.open(record.name, version.version, upstream, version.load_path)
                    held.transition(AdapterState.LOADED)
                    held.retiring = version.version != record.active_version
                elif held.state is not AdapterState.LOADED:
                    continue
                held.engines[engine_name] = engine.status().restarts
                changed = True
        external: dict[str, int] = {}
        for upstream, engines in places.items():
            held = table.get(upstream)
            for engine_name in engines:
                if held is None or not (
                    engine_name in held.engines
                    or engine_name in held.loading_on
                    or engine_name in held.blocked
                ):
                    external[engine_name] = external.get(engine_name, 0) + 1
        if external != table.external:
            table.external = external
            changed = True
        return changed

    async def views(self) -> list[ReplicaView]:
        """Every replica on the board, this one first."""
        view = await self._board.read()
        now = time.time()
        out = [
            ReplicaView(
                id=r.id,
                this=r.id == self._board.replica_id,
                live=now - r.heartbeat_at < self._board.dead_after_s,
                heartbeat_age_s=round(max(0.0, now - r.heartbeat_at), 3),
                holds=len(r.holds),
            )
            for r in view.replicas
        ]
        return sorted(out, key=lambda r: (not r.this, r.id))

    # --- 3. heartbeat -----------------------------------------------------------------------
    def _holds(self) -> list[str]:
        ctx = self._ctx
        return [
            hold_key(ctx.by_name[engine_name].url, slot.upstream)
            for slot in ctx.table
            for engine_name, count in slot.in_flight.items()
            if count > 0
        ]

    # --- 4. housekeeping --------------------------------------------------------------------
    def _collect_orphans(self, view: BoardView) -> None:
        """Unload (one at a time, in the background) versions no registered adapter has:
        deleted through another replica, or left by one that died half way."""
        if self._records_as_of is None or (
            self._collecting is not None and not self._collecting.done()
        ):
            return
        ctx = self._ctx
        versions = self._versions()
        by_url = {engine.url: engine for engine in ctx.engines}
        cutoff = self._records_as_of - ORPHAN_MARGIN_S
        for placement in view.placements:
            engine = by_url.get(placement.engine)
            if (
                engine is None
                or not engine.ready
                or placement.upstream in versions
                or placement.state != PlacementState.LOADED
                or placement.updated_at >= cutoff
            ):
                continue
            slot = ctx.table.get(placement.upstream)
            if slot is not None and (slot.leases or slot.busy):
                continue
            self._collecting = ctx.spawn(self._collect(engine, placement.upstream))
            return

    async def _collect(self, engine: Engine, upstream: str) -> None:
        ctx = self._ctx
        slot = ctx.table.get(upstream)
        if slot is not None and slot.leases == 0 and not slot.busy:
            slot.engines.pop(engine.name, None)
            if not slot.engines:
                ctx.table.remove(slot)
        if await self._loader.unplace(engine, upstream):
            logger.info(
                "unloaded %s from engine %s: no adapter registers it", upstream, engine.name
            )
        ctx.table.notify()

    async def reconcile(self, engine: Engine) -> None:
        """Make the board's rows for ``engine`` match what it lists (after a restart it holds
        nothing: rows saying otherwise go before anything is loaded again)."""
        listed_at = time.time()
        try:
            models = await engine.client.list_models()
        except GatewayError as exc:
            logger.info("reconcile %s skipped: %s", engine.name, exc.message)
            return
        listed = {str(m["id"]) for m in models if m.get("parent") is not None}
        changed = await self._board.reconcile(engine.url, listed, listed_at, set(self._versions()))
        if changed:
            logger.info(
                "engine %s: %d placement rows corrected from what it lists", engine.name, changed
            )
            self.wake()
