"""AdapterLifecycle: registered adapters onto engines and back, under traffic.

The registry (:mod:`adapters.registry`) is the source of truth of what exists; the lifecycle
owns what is loaded. This module is its front door and the admin operations behind the admin
API (register, load, unload, restore, pin, delete); the other jobs live beside it:

* :mod:`gateway.lifecycle.lease`: the request path (``lease``), making room and waiting for it;
* :mod:`gateway.lifecycle.loader`: engine load/unload I/O, shielded from whoever asked;
* :mod:`gateway.lifecycle.cooldown`: failed loads and when each may be tried again;
* :mod:`gateway.lifecycle.recovery`: re-applying the desired state after an engine restart;
* :mod:`gateway.lifecycle.swap`: making a version active, retiring the old one once drained;
* :mod:`gateway.lifecycle.context`: the state they share, and the locking rules;
* :mod:`gateway.lifecycle.fetching`: remote sources (``s3://``, ``hf://``) fetched by one
  background task per name (state ``fetching``), then registered through :meth:`register`.

Capacity: each engine has its own slots (its ``lora_capacity``, or ``capacity`` when given);
where a version loads is the placement policy's choice (:mod:`gateway.placement.policy`):
``affinity`` (default) loads it on one engine and the gateway holds the sum of the engines'
slots, ``replicate`` loads every version on every ready engine and holds the smallest engine's
count. An adapter loads on its first request, evicting the least recently used idle one; pinned
adapters stay loaded. Versions: the
engine knows a version as ``NAME@vN.<content tag>``; a new version loads beside the old one, the
active pointer swaps, and the old version unloads once its requests drain, so no request fails.
Files: registration copies an adapter's files into the content-addressed, read-only
:class:`~adapters.store.AdapterStore` and validates the copy; engines only ever load that copy,
so the source directory may change (or be retrained in place) without changing what a
registered version serves.

Admin operations run in a task of their own (:meth:`LifecycleContext.shielded`): an admin client
that hangs up does not leave one half done. ``unload`` and ``delete`` wait for requests in flight
(:mod:`gateway.lifecycle.drain`), then succeed, or answer 409 with nothing changed; new requests
for the versions they remove wait for the outcome (after a delete: 404).

Built by :func:`gateway.lifecycle.startup.open_lifecycle` in the app's lifespan; the router
(:mod:`gateway.inference.routing`) calls ``lease`` / ``public_models``, the admin routes
(:mod:`gateway.api.admin.adapters`) and :func:`gateway.lifecycle.startup.scan_adapters_dir` the
operations.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, KeysView, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from pathlib import Path
from typing import Any

from adapters.registry import AdapterRecord, AdapterVersion, NewVersion, Registry
from adapters.sources import Sources
from adapters.store import AdapterStore
from adapters.validation import validate_name
from gateway.engines.base import Engine
from gateway.errors import (
    AdapterLoadError,
    AdapterNotFoundError,
    CapacityError,
    ConflictError,
    EngineUnavailableError,
    GatewayError,
)
from gateway.inference.routing import PublicModel, Route
from gateway.lifecycle.context import LifecycleContext
from gateway.lifecycle.cooldown import LoadFailures
from gateway.lifecycle.defaults import set_sampling_defaults, with_checked_sampling_defaults
from gateway.lifecycle.drain import drain, give_back, start_drain
from gateway.lifecycle.fetching import AdapterFetcher, Fetch, FetchLimits
from gateway.lifecycle.lease import LeaseBroker
from gateway.lifecycle.loader import EngineLoader
from gateway.lifecycle.recovery import Recovery
from gateway.lifecycle.replicas import ReplicaSync, ReplicaView
from gateway.lifecycle.swap import VersionSwap
from gateway.lifecycle.types import (
    AdapterView,
    LifecycleObserver,
    NullLifecycleObserver,
    UnloadCause,
)
from gateway.placement.board import PlacementBoard, SharedBoard
from gateway.placement.policy import PlacementPolicy
from gateway.placement.slots import EngineLoad, SlotTable
from gateway.placement.stats import PlacementStats

logger = logging.getLogger(__name__)


class AdapterLifecycle:
    def __init__(
        self,
        registry: Registry,
        engines: Sequence[Engine],
        store: AdapterStore,
        *,
        capacity: int | None = None,
        observer: LifecycleObserver | None = None,
        fetcher: AdapterFetcher | None = None,
        drain_timeout_s: float = 30.0,
        slot_wait_s: float = 10.0,
        load_retry_s: float = 30.0,
        engine_error_retry_s: float = 5.0,
        policy: PlacementPolicy = PlacementPolicy.AFFINITY,
        replicate_threshold: int = 4,
        board: PlacementBoard | None = None,
        sync_interval_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not engines:
            raise ValueError("the adapter lifecycle needs at least one engine")
        self.registry = registry
        self.store = store
        self.engines = list(engines)
        self.observer: LifecycleObserver = observer or NullLifecycleObserver()
        #: Remote sources (s3://, hf://) are fetched by it, then registered here.
        self.fetcher = fetcher or AdapterFetcher(
            Sources(),
            store.root.parent / ".fetch",
            FetchLimits(max_adapter_bytes=store.validator.limits.max_adapter_bytes),
        )
        self._ctx = ctx = LifecycleContext(
            registry,
            self.engines,
            SlotTable(self.engines, capacity, clock, policy=policy),
            LoadFailures(clock, refused_retry_s=load_retry_s, error_retry_s=engine_error_retry_s),
            self.observer,
            clock,
            slot_wait_s=slot_wait_s,
            drain_timeout_s=drain_timeout_s,
            replicate_threshold=replicate_threshold,
            board=board,
        )
        self._loader = EngineLoader(ctx)
        self._broker = LeaseBroker(ctx, self._loader)
        #: In step with other gateway replicas (a shared placement board), else None.
        self.replicas: ReplicaSync | None = None
        if isinstance(ctx.board, SharedBoard):
            self.replicas = ReplicaSync(ctx, ctx.board, self._loader, interval_s=sync_interval_s)
            ctx.resync = self.replicas.wake
        self._recovery = Recovery(ctx, self._broker, self.replicas)
        self._swap = VersionSwap(ctx, self._broker, self._loader)

    @property
    def capacity(self) -> int:
        """How many adapter versions may be loaded at once (over all engines)."""
        return self._ctx.table.capacity

    @property
    def policy(self) -> PlacementPolicy:
        return self._ctx.table.policy

    @property
    def engine_load(self) -> EngineLoad:
        """The gateway's requests in flight per engine (the router counts base requests in)."""
        return self._ctx.table.load

    @property
    def placement_stats(self) -> PlacementStats:
        return self._ctx.table.stats

    def slots_used_per_engine(self) -> Mapping[str, int]:
        """Engine name -> slots taken there (loaded or loading)."""
        return self._ctx.table.used_per_engine()

    @property
    def slot_wait_s(self) -> float:
        """How long a load waits for a busy slot to free up before answering CapacityError."""
        return self._ctx.slot_wait_s

    @slot_wait_s.setter
    def slot_wait_s(self, value: float) -> None:
        self._ctx.slot_wait_s = value

    @property
    def drain_timeout_s(self) -> float:
        """How long unload and delete wait for requests in flight before answering 409."""
        return self._ctx.drain_timeout_s

    @drain_timeout_s.setter
    def drain_timeout_s(self, value: float) -> None:
        self._ctx.drain_timeout_s = value

    # --- start and stop --------------------------------------------------------------------
    async def start(self) -> None:
        """Read the registry, collect unused stored copies, then watch the engines: each
        (re)start re-applies desired state."""
        await self._recovery.read_registry()
        await asyncio.to_thread(self.store.collect, self._store_paths_in_use())
        if self.replicas is not None:
            # What the engines really hold and what the other replicas hold, before loading
            # anything: rows may be stale (an engine restarted while no replica watched it).
            for engine in self.engines:
                if engine.ready:
                    await self.replicas.reconcile(engine)
            await self.replicas.tick()
            self._ctx.spawn(self.replicas.run())
        await self._recovery.watch()

    async def close(self) -> None:
        """Stop background work. Loaded adapters stay loaded (the engine may outlive us)."""
        self._ctx.closed = True
        self._recovery.stop()
        await self.fetcher.close()
        await self._ctx.cancel_all()
        if self.replicas is not None:
            try:
                await self._ctx.board.close()
            except GatewayError as exc:
                logger.warning("could not leave the placement board: %s", exc.message)
        await asyncio.to_thread(self.registry.close)

    async def on_engine_ready(self, engine: Engine) -> None:
        """The engine (re)started with no adapters: load the desired ones onto it again."""
        await self._recovery.on_engine_ready(engine)

    # --- AdapterResolver -------------------------------------------------------------------
    def lease(
        self,
        name: str,
        *,
        engine: str | None = None,
        version: int | None = None,
        exclude: Collection[str] = (),
    ) -> AbstractAsyncContextManager[Route]:
        """Hold ``name``'s active version loaded (not evictable) while the block runs; on
        ``engine`` when given, never on one in ``exclude``. A name whose only version is still
        being fetched: 503 with Retry-After."""
        if name not in self._ctx.records:
            pending = self.fetcher.unavailable(name)
            if pending is not None:
                raise pending
        return self._broker.lease(name, engine=engine, version=version, exclude=exclude)

    def public_models(self) -> list[PublicModel]:
        base = self.engines[0].base_model
        return [
            PublicModel(
                id=record.name,
                created=int(record.created_at.timestamp()),
                owned_by="lora-gateway",
                parent=base,
            )
            for record in sorted(self._ctx.records.values(), key=lambda r: r.name)
        ]

    def registered_names(self) -> KeysView[str]:
        """A live view of the registered names (for bounding metric labels)."""
        return self._ctx.records.keys()

    async def replica_views(self) -> list[ReplicaView]:
        """The gateway replicas on the shared placement board (empty without one)."""
        return await self.replicas.views() if self.replicas is not None else []

    def loaded_per_engine(self) -> Mapping[str, int]:
        """Engine name -> adapters loaded there (for the metrics' collector)."""
        return self._ctx.table.loaded_per_engine()

    # --- operations behind the admin API ---------------------------------------------------
    async def register(
        self,
        name: str,
        path: str | Path,
        *,
        pinned: bool | None = None,
        load: bool = False,
        new_version: bool = False,
        origin: str | None = None,
    ) -> tuple[AdapterView, bool]:
        """Validate and record an adapter; (view, created). Same name and content: no-op.
        ``origin``: the remote source ``path`` was fetched from (recorded as its source)."""
        validate_name(name, base_model=self.engines[0].base_model)
        layout = await asyncio.to_thread(self.store.admit, name, path)
        new = with_checked_sampling_defaults(
            NewVersion.from_layout(layout, base_model=self.engines[0].base_model)
        )
        if origin is not None:
            new = replace(new, source_path=origin)
        else:
            self.fetcher.forget_failed(name)
        return await self._ctx.shielded(self._register(name, new, pinned, load, new_version))

    async def _register(
        self, name: str, new: NewVersion, pinned: bool | None, load: bool, new_version: bool
    ) -> tuple[AdapterView, bool]:
        ctx = self._ctx
        async with ctx.lock(name):
            self._check_not_deleting(name)
            record = ctx.records.get(name)
            if record is not None:
                same = next(
                    (v for v in record.versions if v.same_content(new.sha256, new.config_sha256)),
                    None,
                )
                if same is not None and same.version != record.active_version and new_version:
                    ctx.failures.clear(same.upstream_name)
                    await self._swap.activate(record, same.version, load=load)
                    return self.view(name), False
                if same is not None and same.version == record.active_version:
                    if pinned is not None and pinned != record.pinned:
                        await self._set_pinned_locked(record, pinned)
                    if load or pinned:
                        ctx.failures.clear(same.upstream_name)
                        await self._load_soft(ctx.records[name].active)
                    return self.view(name), False
                if not new_version:
                    raise ConflictError(
                        f"adapter {name!r} is registered with different content (sha256 "
                        f"{record.active.sha256[:12]}..., this one {new.sha256[:12]}...); pass "
                        "new_version=true to register it as a new version",
                        code="adapter_conflict",
                        param="name",
                    )
                record = await asyncio.to_thread(
                    self.registry.add, name, new, pinned=record.pinned, activate=False
                )
                ctx.records[name] = record
                await self._swap.activate(record, record.latest_version, load=load)
                if pinned is not None and pinned != record.pinned:
                    await self._set_pinned_locked(ctx.records[name], pinned)
                return self.view(name), True
            if pinned:
                self._check_pin_room(name)
            record = await asyncio.to_thread(self.registry.add, name, new, pinned=bool(pinned))
            ctx.records[name] = record
            logger.info("adapter %s registered from %s", name, new.source_path)
            if load or pinned:
                try:
                    await self._load_soft(record.active)
                except AdapterLoadError:
                    # Refused by the engine on first sight: nothing worth keeping.
                    await asyncio.to_thread(self.registry.delete, name)
                    del ctx.records[name]
                    ctx.failures.clear(record.active.upstream_name)
                    raise
            return self.view(name), True

    def fetch(
        self,
        name: str,
        source: str,
        *,
        pinned: bool | None = None,
        load: bool = False,
        new_version: bool = False,
    ) -> Fetch:
        """Start (or join) the background fetch of ``name`` from a remote ``source``; once
        fetched it is registered as :meth:`register` would (see gateway.lifecycle.fetching)."""
        validate_name(name, base_model=self.engines[0].base_model)

        async def register(directory: Path, origin: str) -> tuple[AdapterView, bool]:
            return await self.register(
                name, directory, pinned=pinned, load=load, new_version=new_version, origin=origin
            )

        return self.fetcher.start(name, source, register)

    async def _load_soft(self, version: AdapterVersion) -> None:
        """Load now if possible; with no engine up or no free slot, it loads later (on the next
        ready engine, or on its first request)."""
        try:
            slot = await self._broker.ensure_loaded(version)
        except (EngineUnavailableError, CapacityError) as exc:
            slot, reason = None, exc.message
        else:
            reason = "no adapter slot is free now"
        if slot is None:
            self._ctx.wanted[version.name] = time.time()
            logger.info("adapter %s will load later: %s", version.name, reason)

    async def load(self, name: str) -> AdapterView:
        """Load the active version now (retrying a failed load); a no-op when loaded."""
        return await self._ctx.shielded(self._load(name))

    async def _load(self, name: str) -> AdapterView:
        self._check_not_deleting(name)
        self._ctx.failures.clear(self._ctx.get(name).active.upstream_name)
        await self._broker.load(name)
        return self.view(name)

    async def unload(self, name: str) -> AdapterView:
        """Unload the active version once its requests drain; a no-op when not loaded."""
        return await self._ctx.shielded(self._unload(name))

    async def _unload(self, name: str) -> AdapterView:
        ctx = self._ctx
        async with ctx.lock(name):
            self._check_not_deleting(name)
            record = ctx.get(name)
            if record.pinned:
                raise ConflictError(
                    f"adapter {name!r} is pinned and stays loaded; unpin it first "
                    f'(PATCH /admin/adapters/{name} {{"pinned": false}})',
                    code="adapter_pinned",
                )
            slot = ctx.table.get(record.active.upstream_name)
            if slot is not None:
                await self._loader.settle(slot)
            ctx.wanted.pop(name, None)
            if slot is None or not ctx.table.holds(slot) or slot.draining:
                return self.view(name)
            start_drain([slot])
        await drain(ctx, [slot], what="unload", name=name)
        async with ctx.lock(name):
            if ctx.table.evictable(slot, lambda _: False) and not slot.busy:
                await self._loader.unload(slot, UnloadCause.REQUESTED)
            else:  # evicted meanwhile, or dropped by an engine restart
                give_back([slot])
            return self.view(name)

    async def restore(self, name: str, version: int) -> AdapterView:
        """Make an earlier (or any registered) version active again, with the swap's care."""
        return await self._ctx.shielded(self._restore(name, version))

    async def _restore(self, name: str, version: int) -> AdapterView:
        async with self._ctx.lock(name):
            self._check_not_deleting(name)
            record = self._ctx.get(name)
            target = record.version(version)
            if target is None:
                raise AdapterNotFoundError(
                    f"adapter {name!r} has no version {version}", param="version"
                )
            if version == record.active_version:
                return self.view(name)
            await asyncio.to_thread(self.store.verify, target)
            self._ctx.failures.clear(target.upstream_name)
            await self._swap.activate(record, version, load=False)
            return self.view(name)

    async def set_sampling_defaults(
        self, name: str, defaults: Mapping[str, Any] | None
    ) -> AdapterView:
        await set_sampling_defaults(self._ctx, self.registry, name, defaults)
        return self.view(name)

    async def set_pinned(self, name: str, pinned: bool) -> AdapterView:
        return await self._ctx.shielded(self._set_pinned(name, pinned))

    async def _set_pinned(self, name: str, pinned: bool) -> AdapterView:
        async with self._ctx.lock(name):
            self._check_not_deleting(name)
            await self._set_pinned_locked(self._ctx.get(name), pinned)
            if pinned:
                await self._load_soft(self._ctx.records[name].active)
            return self.view(name)

    async def _set_pinned_locked(self, record: AdapterRecord, pinned: bool) -> None:
        if pinned and not record.pinned:
            self._check_pin_room(record.name)
        self._ctx.records[record.name] = await asyncio.to_thread(
            self.registry.set_pinned, record.name, pinned
        )

    def _check_pin_room(self, name: str) -> None:
        pinned = [r.name for r in self._ctx.records.values() if r.pinned and r.name != name]
        if len(pinned) >= self.capacity:
            raise CapacityError(
                f"cannot pin {name!r}: {len(pinned)} of {self.capacity} adapter slots are "
                f"already pinned ({', '.join(sorted(pinned))}); unpin one first",
                code="pinned_capacity_exhausted",
            )

    def _check_not_deleting(self, name: str) -> None:
        if name in self._ctx.deleting:
            raise ConflictError(
                f"adapter {name!r} is being deleted; retry later", code="adapter_busy"
            )

    async def delete(self, name: str) -> None:
        """Unload every version of ``name`` (after in-flight requests) and forget it; a fetch
        of it in progress is stopped."""
        if await self.fetcher.cancel(name) and name not in self._ctx.records:
            return
        await self._ctx.shielded(self._delete(name))

    async def _delete(self, name: str) -> None:
        ctx = self._ctx
        async with ctx.lock(name):
            self._check_not_deleting(name)
            ctx.get(name)
            # Before draining: an alias still sending requests here refuses the delete.
            await asyncio.to_thread(self.registry.check_deletable, name)
            for slot in [s for s in ctx.table if s.name == name]:
                await self._loader.settle(slot)
            slots = [s for s in ctx.table if s.name == name]
            ctx.deleting.add(name)
            start_drain(slots)
        try:
            await drain(ctx, slots, what="delete", name=name)
            async with ctx.lock(name):
                try:
                    await asyncio.to_thread(self.registry.delete, name)
                except BaseException:
                    give_back(slots)
                    raise
                record = ctx.records.pop(name)
                await asyncio.to_thread(self.store.collect, self._store_paths_in_use())
                for slot in [s for s in ctx.table if s.name == name]:
                    await self._loader.settle(slot)
                    if ctx.table.holds(slot):
                        await self._loader.unload(slot, UnloadCause.DELETED)
                for version in record.versions:
                    ctx.failures.clear(version.upstream_name)
                ctx.wanted.pop(name, None)
                self.observer.on_delete(name)
                logger.info("adapter %s deleted", name)
        finally:
            ctx.deleting.discard(name)
            ctx.table.notify()

    def _store_paths_in_use(self) -> list[str]:
        return [v.load_path for record in self._ctx.records.values() for v in record.versions]

    # --- views -----------------------------------------------------------------------------
    def view(self, name: str) -> AdapterView:
        return self._ctx.view(name)

    def views(self) -> list[AdapterView]:
        return [self._ctx.view(name) for name in sorted(self._ctx.records)]
