"""Engine I/O of the adapter lifecycle: load a slot onto engines, unload it, evict it.

Each load or unload runs in a task of its own (:meth:`LifecycleContext.spawn`), remembered on
the slot (``slot.job``) and awaited through :func:`asyncio.shield`: a request whose client hangs
up (its task cancelled) stops waiting, while the engine call finishes and leaves the slot in a
consistent state: LOADED, or gone from the table (REGISTERED or FAILED). Whoever finds a slot
with a job still running waits for it (:meth:`EngineLoader.settle`) instead of starting another.
The errors it raises name the public adapter; the engine's words go to their ``detail``.

Called with the adapter name's lock held, by the lease path (:mod:`gateway.lifecycle.lease`:
loads, evictions), the admin operations (:mod:`gateway.lifecycle.service`: unloads, swaps,
deletes) and the restart recovery (:mod:`gateway.lifecycle.recovery`).
"""

from __future__ import annotations

import asyncio
import logging
import time

from adapters.state import AdapterState
from gateway.engines.base import Engine
from gateway.errors import (
    AdapterLoadError,
    AdapterNotFoundError,
    EngineError,
    EngineUnavailableError,
    GatewayError,
    UpstreamHTTPError,
)
from gateway.lifecycle.context import LifecycleContext
from gateway.lifecycle.types import UnloadCause
from gateway.placement.slots import Slot

logger = logging.getLogger(__name__)


class EngineLoader:
    def __init__(self, ctx: LifecycleContext) -> None:
        self._ctx = ctx

    async def settle(self, slot: Slot) -> None:
        """Wait for the load or unload of ``slot`` in progress (its outcome is on the slot)."""
        job = slot.job
        if job is not None and not job.done():
            await asyncio.wait({job})

    async def load(self, slot: Slot, engines: list[Engine]) -> None:
        """Load the LOADING ``slot`` onto ``engines``; raises as the load failed."""
        assert slot.state is AdapterState.LOADING
        slot.job = self._ctx.spawn(self._load_job(slot, engines))
        await asyncio.shield(slot.job)

    async def unload(self, slot: Slot, cause: UnloadCause) -> None:
        """Unload a drained ``slot`` from every engine that holds it; the slot is then gone."""
        slot.transition(AdapterState.UNLOADING)  # at once: no longer a victim or a route
        slot.accepting = False
        slot.job = self._ctx.spawn(self._unload_job(slot, cause))
        await asyncio.shield(slot.job)

    # --- the jobs ------------------------------------------------------------------------------
    async def _load_job(self, slot: Slot, engines: list[Engine]) -> None:
        try:
            await self._load_on(slot, engines)
        except BaseException:
            if slot.state is AdapterState.LOADING:  # not one of the outcomes handled below
                self._ctx.table.remove(slot)
                slot.transition(AdapterState.REGISTERED)
            raise

    async def _load_on(self, slot: Slot, engines: list[Engine]) -> None:
        ctx = self._ctx
        started = time.perf_counter()
        refused: str | None = None
        engine_failed: str | None = None  # the engine answered 5xx: maybe a bad adapter
        unavailable: list[str] = []
        for engine in engines:
            restarts = engine.status().restarts
            try:
                await engine.client.load_lora(slot.upstream, slot.path)
            except AdapterLoadError as exc:
                refused = exc.message
                break
            except UpstreamHTTPError as exc:
                engine_failed = exc.message
                unavailable.append(f"{engine.name}: {exc.message}")
                continue
            except EngineError as exc:
                unavailable.append(f"{engine.name}: {exc.message}")
                continue
            slot.engines[engine.name] = restarts
        if refused is None and ctx.table.current_engines(slot):
            seconds = time.perf_counter() - started
            slot.transition(AdapterState.LOADED)
            ctx.failures.clear(slot.upstream)
            ctx.wanted[slot.name] = time.time()
            ctx.observer.on_load(slot.name, seconds)
            logger.info("adapter %s loaded in %.3f s", slot.upstream, seconds)
            await ctx.persist(slot.name, slot.version, AdapterState.LOADED)
            return
        ctx.table.remove(slot)
        if refused is not None:
            slot.transition(AdapterState.FAILED)
            await self._drop_from_engines(slot)
            ctx.failures.record(slot.upstream, refused, refused=True)
            ctx.observer.on_load_failed(slot.name)
            logger.warning("adapter %s failed to load: %s", slot.upstream, refused)
            await ctx.persist(slot.name, slot.version, AdapterState.FAILED, refused)
            raise AdapterLoadError(
                f"the engine refused to load adapter {slot.name!r}",
                code="engine_load_failed",
                detail=f"{slot.upstream}: {refused}",
            )
        slot.transition(AdapterState.REGISTERED)
        if engine_failed is not None:
            # Not marked failed for good: the engine may be busy or restarting. A short
            # cool-down keeps a broken adapter from turning every request into a load.
            ctx.failures.record(slot.upstream, engine_failed, refused=False)
            ctx.observer.on_load_failed(slot.name)
            logger.warning(
                "adapter %s: the engine failed to load it: %s", slot.upstream, engine_failed
            )
        raise EngineUnavailableError(
            f"no engine could load adapter {slot.name!r} just now; retry shortly",
            detail=f"{slot.upstream}: {'; '.join(unavailable)}",
        )

    async def _unload_job(self, slot: Slot, cause: UnloadCause) -> None:
        ctx = self._ctx
        try:
            await self._drop_from_engines(slot)
        finally:  # whatever the engine said (or if the gateway closes), the slot is free
            ctx.table.remove(slot)
            slot.transition(AdapterState.REGISTERED)
        ctx.observer.on_unload(slot.name)
        if cause is UnloadCause.EVICTED:
            ctx.wanted.pop(slot.name, None)
            ctx.observer.on_evict(slot.name)
        logger.info("adapter %s unloaded (%s)", slot.upstream, cause)
        if cause is not UnloadCause.DELETED:
            await ctx.persist(slot.name, slot.version, AdapterState.REGISTERED)

    async def _drop_from_engines(self, slot: Slot) -> None:
        for engine_name in self._ctx.table.current_engines(slot):
            engine = self._ctx.by_name[engine_name]
            try:
                await engine.client.unload_lora(slot.upstream)
            except AdapterNotFoundError:
                pass  # the engine no longer has it: the goal is reached
            except GatewayError as exc:
                logger.warning(
                    "engine %s could not unload %s: %s", engine_name, slot.upstream, exc.message
                )
        slot.engines.clear()
