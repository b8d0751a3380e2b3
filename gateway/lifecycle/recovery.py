"""Re-apply the adapter lifecycle's desired state when an engine (re)starts.

An engine that (re)starts has no adapter loaded. :class:`Recovery` reads the registry at the
gateway's start (pinned adapters and those loaded before are *wanted*), listens to every
engine's ready event and, on each, forgets what that engine held and loads the pinned adapters,
then the most recently wanted ones, up to capacity. A version loaded before a restart is never
routed to the restarted engine: each load remembers the engine's restart count
(:mod:`gateway.placement.slots`). Versions still cooling down after a failed load, and adapters
being deleted, are skipped.

Built and driven by :class:`gateway.lifecycle.service.AdapterLifecycle` (``start``, ``close``,
``on_engine_ready``); loads go through :meth:`gateway.lifecycle.lease.LeaseBroker.ensure_loaded`.
"""

from __future__ import annotations

import asyncio
import logging
import time

from adapters.errors import AdapterError
from adapters.state import AdapterState
from gateway.engines.base import Engine
from gateway.errors import GatewayError
from gateway.lifecycle.context import LifecycleContext
from gateway.lifecycle.lease import LeaseBroker
from gateway.lifecycle.replicas import ReplicaSync

logger = logging.getLogger(__name__)


class Recovery:
    def __init__(
        self, ctx: LifecycleContext, broker: LeaseBroker, replicas: ReplicaSync | None = None
    ) -> None:
        self._ctx = ctx
        self._broker = broker
        self._replicas = replicas

    async def read_registry(self) -> None:
        """What is registered, what failed before, what is wanted (pinned or loaded before)."""
        ctx = self._ctx
        for record in await asyncio.to_thread(ctx.registry.list):
            ctx.records[record.name] = record
            for version in record.versions:
                if version.state is AdapterState.FAILED:
                    # Failed before this start: shown as failed, tried again on first use.
                    ctx.failures.record(
                        version.upstream_name,
                        version.last_error or "load failed",
                        refused=True,
                        retry_now=True,
                    )
            active = record.active
            if record.pinned or active.state is AdapterState.LOADED:
                ctx.wanted[record.name] = active.updated_at.timestamp()

    async def watch(self) -> None:
        """Re-apply the desired state now (if an engine is up) and after each (re)start."""
        ctx = self._ctx
        for engine in ctx.engines:
            engine.add_ready_listener(self.on_engine_ready)
        if any(engine.ready for engine in ctx.engines):
            await self.reapply()

    def stop(self) -> None:
        for engine in self._ctx.engines:
            engine.remove_ready_listener(self.on_engine_ready)

    async def on_engine_ready(self, engine: Engine) -> None:
        """The engine (re)started with no adapters: load the desired ones onto it again."""
        if self._ctx.closed:
            return
        if self._replicas is not None:
            # Other replicas' rows may still say it holds versions: correct them first, or a
            # load would be skipped as "there already".
            await self._replicas.reconcile(engine)
        self._forget_engine(engine)
        await self.reapply()
        logger.info(
            "engine %s ready: %d adapters loaded",
            engine.name,
            self._ctx.table.loaded_per_engine().get(engine.name, 0),
        )

    def _forget_engine(self, engine: Engine) -> None:
        ctx = self._ctx
        now_wall, now = time.time(), ctx.clock()
        for slot in ctx.table.forget_engine(engine.name):
            # Held by no engine any more: remember it as wanted (by recency), free its slot.
            if not slot.retiring:
                ctx.wanted[slot.name] = now_wall - (now - slot.last_used)
            if slot.leases == 0:
                ctx.table.remove(slot)
                slot.transition(AdapterState.UNLOADING)
                slot.transition(AdapterState.REGISTERED)

    async def reapply(self) -> None:
        """Load pinned adapters, then the most recently wanted ones, up to capacity."""
        ctx = self._ctx
        pinned = {name for name, record in ctx.records.items() if record.pinned}
        wanted = sorted(ctx.wanted, key=lambda name: -ctx.wanted[name])
        names = [*sorted(pinned), *(name for name in wanted if name not in pinned)]
        for name in names[: ctx.table.capacity]:
            async with ctx.lock(name):
                record = ctx.records.get(name)
                if (
                    record is None
                    or name in ctx.deleting
                    or ctx.failures.remaining_s(record.active.upstream_name) > 0
                ):
                    continue
                try:
                    await self._broker.ensure_loaded(record.active)
                except (GatewayError, AdapterError) as exc:
                    logger.warning("re-applying adapter %s failed: %s", name, exc.message)
