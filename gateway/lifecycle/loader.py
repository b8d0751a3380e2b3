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
from gateway.placement.board import PlacementTaken
from gateway.placement.slots import Slot
from gateway.placement.stats import PlacementEvent

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

    async def add_engine(self, slot: Slot, engine: Engine) -> bool:
        """Load the LOADED ``slot`` onto one engine more (it keeps serving meanwhile); False
        when that engine could not (logged: the slot still serves where it is)."""
        assert slot.state is AdapterState.LOADED
        slot.loading_on.add(engine.name)
        task = self._ctx.spawn(self._add_engine_job(slot, engine))
        slot.job = task
        return await asyncio.shield(task)

    async def drop_from(self, slot: Slot, engine_name: str, cause: UnloadCause) -> None:
        """Free ``slot``'s place on one engine (affinity eviction): the whole slot when that is
        the only engine holding it."""
        if [n for n in self._ctx.table.current_engines(slot) if n != engine_name]:
            slot.job = self._ctx.spawn(self._drop_one_job(slot, engine_name, cause))
            await asyncio.shield(slot.job)
        else:
            await self.unload(slot, cause)

    # --- the jobs ------------------------------------------------------------------------------
    async def _load_job(self, slot: Slot, engines: list[Engine]) -> None:
        try:
            await self._load_on(slot, engines)
        except BaseException:
            if slot.state is AdapterState.LOADING:  # not one of the outcomes handled below
                self._ctx.table.remove(slot)
                slot.transition(AdapterState.REGISTERED)
            raise
        finally:
            slot.loading_on.clear()

    async def _add_engine_job(self, slot: Slot, engine: Engine) -> bool:
        restarts = engine.status().restarts
        try:
            await self._place(slot, engine)
        except PlacementTaken as exc:
            logger.info(
                "adapter %s: no place on engine %s now: %s", slot.upstream, engine.name, exc
            )
            self._ctx.resync()
            return False
        except GatewayError as exc:
            logger.warning(
                "adapter %s: engine %s could not load it: %s", slot.upstream, engine.name, exc
            )
            return False
        finally:
            slot.loading_on.discard(engine.name)
        if not self._ctx.table.holds(slot) or slot.state is not AdapterState.LOADED:
            return False
        slot.engines[engine.name] = restarts
        self._ctx.table.stats.count(engine.name, PlacementEvent.LOAD)
        logger.info("adapter %s loaded on engine %s too", slot.upstream, engine.name)
        return True

    async def _drop_one_job(self, slot: Slot, engine_name: str, cause: UnloadCause) -> None:
        slot.engines.pop(engine_name, None)  # at once: no longer routed there
        try:
            await self.unplace(self._ctx.by_name[engine_name], slot.upstream)
        finally:
            self._ctx.table.notify()
        if cause is UnloadCause.EVICTED:
            self._ctx.table.stats.count(engine_name, PlacementEvent.EVICTION)
            self._ctx.observer.on_evict(slot.name)
        logger.info("adapter %s unloaded from engine %s (%s)", slot.upstream, engine_name, cause)

    async def _load_on(self, slot: Slot, engines: list[Engine]) -> None:
        ctx = self._ctx
        started = time.perf_counter()
        refused: str | None = None
        engine_failed: str | None = None  # the engine answered 5xx: maybe a bad adapter
        unavailable: list[str] = []
        taken: str | None = None  # another replica holds the place (shared board)
        for engine in engines:
            restarts = engine.status().restarts
            try:
                await self._place(slot, engine)
            except PlacementTaken as exc:
                taken = f"{engine.name}: {exc}"
                logger.info("adapter %s: no place on %s now: %s", slot.upstream, engine.name, exc)
                continue
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
            finally:
                slot.loading_on.discard(engine.name)
            slot.engines[engine.name] = restarts
            ctx.table.stats.count(engine.name, PlacementEvent.LOAD)
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
        if refused is None and taken is not None and not unavailable:
            slot.transition(AdapterState.REGISTERED)
            ctx.resync()
            raise PlacementTaken(taken)
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
        held_on = ctx.table.current_engines(slot)
        try:
            await self._drop_from_engines(slot)
        finally:  # whatever the engine said (or if the gateway closes), the slot is free
            ctx.table.remove(slot)
            slot.transition(AdapterState.REGISTERED)
        ctx.observer.on_unload(slot.name)
        if cause is UnloadCause.EVICTED:
            ctx.wanted.pop(slot.name, None)
            ctx.observer.on_evict(slot.name)
            for engine_name in held_on:
                ctx.table.stats.count(engine_name, PlacementEvent.EVICTION)
        logger.info("adapter %s unloaded (%s)", slot.upstream, cause)
        if cause is not UnloadCause.DELETED:
            await ctx.persist(slot.name, slot.version, AdapterState.REGISTERED)

    async def _drop_from_engines(self, slot: Slot) -> None:
        for engine_name in self._ctx.table.current_engines(slot):
            await self.unplace(self._ctx.by_name[engine_name], slot.upstream)
        slot.engines.clear()

    # --- through the placement board ---------------------------------------------------------
    async def _place(self, slot: Slot, engine: Engine) -> None:
        """Load ``slot`` onto ``engine`` once the board grants the place (with other gateway
        replicas: none of them loaded it there already, and the engine has a free slot);
        :class:`PlacementTaken` when it does not."""
        board = self._ctx.board
        capacity = self._ctx.table.engine_capacity[engine.name]
        if not await board.claim(engine.url, slot.upstream, capacity):
            return  # another replica loaded it there: it is resident
        try:
            await engine.client.load_lora(slot.upstream, slot.path)
        except BaseException:
            await asyncio.shield(board.abandon(engine.url, slot.upstream))
            raise
        await board.loaded(engine.url, slot.upstream)

    async def unplace(self, engine: Engine, upstream: str) -> bool:
        """Unload ``upstream`` from ``engine`` once no gateway replica uses it there; False
        when another replica still does (it stays loaded; the board keeps counting it)."""
        board = self._ctx.board
        if not await board.release(engine.url, upstream):
            logger.info(
                "adapter %s stays on engine %s: another gateway replica still uses it",
                upstream,
                engine.name,
            )
            return False
        try:
            await engine.client.unload_lora(upstream)
        except AdapterNotFoundError:
            pass  # the engine no longer has it: the goal is reached
        except GatewayError as exc:
            logger.warning("engine %s could not unload %s: %s", engine.name, upstream, exc.message)
        await board.removed(engine.url, upstream)
        return True
