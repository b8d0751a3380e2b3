"""Version swaps: make one registered version of an adapter active, retire the old one.

A new (or restored) version is loaded beside the active one when that one is in use, pinned or
asked for; then the registry's active pointer moves, and the old version takes no new request
and unloads once its requests in flight are done, so no request fails across a swap. Called
with the adapter name's lock held by :class:`gateway.lifecycle.service.AdapterLifecycle`
(``register`` with ``new_version``, ``restore``); the retirement runs in a task of its own.
"""

from __future__ import annotations

import asyncio
import logging

from adapters.registry import AdapterRecord
from gateway.errors import AdapterNotFoundError, CapacityError, EngineUnavailableError
from gateway.lifecycle.context import LifecycleContext
from gateway.lifecycle.lease import LeaseBroker
from gateway.lifecycle.loader import EngineLoader
from gateway.lifecycle.types import UnloadCause
from gateway.placement.slots import Slot

logger = logging.getLogger(__name__)

_RETIRE_RECHECK_S = 0.05


class VersionSwap:
    def __init__(self, ctx: LifecycleContext, broker: LeaseBroker, loader: EngineLoader) -> None:
        self._ctx = ctx
        self._broker = broker
        self._loader = loader

    async def activate(self, record: AdapterRecord, number: int, *, load: bool) -> None:
        """Make version ``number`` active; the old one serves its leases, then unloads."""
        ctx = self._ctx
        old = record.active
        target = record.version(number)
        if target is None:
            raise AdapterNotFoundError(
                f"adapter {record.name!r} has no version {number}", param="version"
            )
        old_slot = ctx.table.get(old.upstream_name)
        if load or record.pinned or (old_slot is not None and old_slot.accepting):
            try:
                if await self._broker.ensure_loaded(target) is None:
                    logger.info("adapter %s v%d will load on first use", record.name, number)
            except (CapacityError, EngineUnavailableError) as exc:
                logger.info(
                    "adapter %s v%d will load on first use (%s)", record.name, number, exc.message
                )
        ctx.records[record.name] = await asyncio.to_thread(
            ctx.registry.set_active, record.name, number
        )
        if old_slot is not None and old.version != number:
            old_slot.retiring = True
            old_slot.accepting = False
            ctx.spawn(self._retire(old_slot))
        logger.info("adapter %s: version %d active (was %d)", record.name, number, old.version)

    async def _retire(self, slot: Slot) -> None:
        ctx = self._ctx
        while True:
            await slot.drained.wait()
            async with ctx.lock(slot.name):
                if not slot.retiring or not ctx.table.holds(slot):
                    return
                if slot.leases == 0 and not slot.busy and not slot.draining:
                    await self._loader.unload(slot, UnloadCause.REPLACED)
                    return
            await asyncio.sleep(_RETIRE_RECHECK_S)
