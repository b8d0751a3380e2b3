"""AdapterLifecycle: registered adapters onto engines and back, under traffic.

The registry (:mod:`adapters.registry`) is the source of truth of what exists; this module owns
what is loaded. It implements :class:`gateway.inference.routing.AdapterResolver` for the request
path (``lease`` / ``public_models``) and the operations behind the admin API (register, load,
unload, restore, pin, delete). Each adapter version moves through the state machine of
:mod:`adapters.state`; an :class:`asyncio.Lock` per name serialises loads, unloads and slow-path
leases of that name, and the hot path (a loaded adapter) takes no lock at all.

* Capacity: at most ``capacity`` adapter versions are loaded (default: the smallest
  ``engine.lora_capacity``); every version is loaded on every ready engine. An adapter loads on
  its first request; to make room the least recently used loaded version that is not pinned,
  not leased by a request in flight and not locked is unloaded (an eviction). When none can go:
  :class:`~gateway.errors.CapacityError` (503).
* Versions: the engine knows a version as ``NAME@vN.<content tag>`` (``@`` is not allowed in
  public names, and the tag makes a stale adapter of the same name on a long-lived engine
  harmless). A new version is loaded beside the old one, the active pointer swaps, and the old
  version is unloaded only once its in-flight leases drain, so no request fails.
* Restarts: a ready listener on every engine re-applies the desired state (pinned adapters,
  then the loaded or previously loaded ones, up to capacity) after the engine's first start and
  after each restart; a version loaded before a restart is never routed to the restarted
  engine (each load remembers the engine's restart count).
* Failures: an adapter the engine refuses (a 4xx) is FAILED with the engine's reason; one the
  engine failed to load (a 5xx, e.g. busy or dying) stays REGISTERED. Neither is failed for
  good: within a cool-down (``load_retry_s``, ``engine_error_retry_s``) requests get the error
  at once without calling the engine, and the first request after it loads again (an admin
  ``load`` retries at once). An unreachable engine gets no cool-down: its supervision marks it
  not ready.
* Remote sources: :meth:`fetch` hands an ``s3://`` or ``hf://`` source to the
  :class:`~gateway.lifecycle.fetching.AdapterFetcher` (one background task per name, state
  ``fetching``), which registers the fetched directory through :meth:`register` like a local one.
* Files: registration copies an adapter's files into the content-addressed, read-only
  :class:`~adapters.store.AdapterStore` and validates the copy; engines only ever load that
  copy, so the source directory may change (or be retrained in place) without changing what
  a registered version serves.

Built by :func:`gateway.lifecycle.startup.open_lifecycle` in the app's lifespan; the admin
routes (:mod:`gateway.api.admin.adapters`) and :func:`gateway.lifecycle.startup.scan_adapters_dir`
call its public methods. Slot bookkeeping (capacity, LRU choice, leases) lives in
:mod:`gateway.placement.slots`; the observer seam and views in :mod:`gateway.lifecycle.types`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, KeysView, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

from adapters.errors import AdapterError
from adapters.registry import AdapterRecord, AdapterVersion, NewVersion, Registry
from adapters.sources import Sources
from adapters.state import AdapterState
from adapters.store import AdapterStore
from adapters.validation import validate_name
from gateway.engines.base import Engine
from gateway.errors import (
    AdapterLoadError,
    AdapterNotFoundError,
    CapacityError,
    ConflictError,
    EngineError,
    EngineUnavailableError,
    GatewayError,
    UpstreamHTTPError,
)
from gateway.inference.routing import PublicModel, Route, unknown_model
from gateway.lifecycle.fetching import AdapterFetcher, Fetch, FetchLimits
from gateway.lifecycle.types import (
    AdapterView,
    LifecycleObserver,
    LifecycleStats,
    LoadFailure,
    LoadFailures,
    NullLifecycleObserver,
    UnloadCause,
    VersionView,
)
from gateway.placement.slots import Slot, SlotTable

logger = logging.getLogger(__name__)

_RETIRE_RECHECK_S = 0.05


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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not engines:
            raise ValueError("the adapter lifecycle needs at least one engine")
        self.registry = registry
        self.store = store
        self.engines = list(engines)
        #: Remote sources (s3://, hf://) are fetched by it, then registered here.
        self.fetcher = fetcher or AdapterFetcher(
            Sources(),
            store.root.parent / ".fetch",
            FetchLimits(max_adapter_bytes=store.validator.limits.max_adapter_bytes),
        )
        self.observer: LifecycleObserver = observer or NullLifecycleObserver()
        self.drain_timeout_s = drain_timeout_s
        #: How long a load waits for a busy slot to free up before answering CapacityError.
        self.slot_wait_s = slot_wait_s
        self.stats = LifecycleStats()
        self._clock = clock
        self._by_name = {engine.name: engine for engine in self.engines}
        self._table = SlotTable(
            self.engines, capacity or min(engine.lora_capacity for engine in self.engines), clock
        )
        self._records: dict[str, AdapterRecord] = {}
        #: Failed loads: refused by the engine (``load_retry_s`` cool-down, shown as FAILED) or
        #: failed inside it (``engine_error_retry_s``); the next request after it tries again.
        self._failed = LoadFailures(
            clock, refused_retry_s=load_retry_s, error_retry_s=engine_error_retry_s
        )
        self._wanted: dict[str, float] = {}  # names to load after a (re)start -> priority
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def capacity(self) -> int:
        """How many adapter versions may be loaded at once (on every engine)."""
        return self._table.capacity

    # --- start and stop ------------------------------------------------------------------------
    async def start(self) -> None:
        """Read the registry, then watch the engines: each (re)start re-applies desired state."""
        for record in await asyncio.to_thread(self.registry.list):
            self._records[record.name] = record
            for version in record.versions:
                if version.state is AdapterState.FAILED:
                    # Failed before this start: shown as failed, tried again on first use.
                    self._failed.record(
                        version.upstream_name,
                        version.last_error or "load failed",
                        refused=True,
                        retry_now=True,
                    )
            active = record.active
            if record.pinned or active.state is AdapterState.LOADED:
                self._wanted[record.name] = active.updated_at.timestamp()
        await asyncio.to_thread(self.store.collect, self._store_paths_in_use())
        for engine in self.engines:
            engine.add_ready_listener(self.on_engine_ready)
        if any(engine.ready for engine in self.engines):
            await self._reapply()

    async def close(self) -> None:
        """Stop background work. Loaded adapters stay loaded (the engine may outlive us)."""
        self._closed = True
        await self.fetcher.close()
        for engine in self.engines:
            engine.remove_ready_listener(self.on_engine_ready)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.to_thread(self.registry.close)

    # --- AdapterResolver -----------------------------------------------------------------------
    @asynccontextmanager
    async def lease(self, name: str) -> AsyncIterator[Route]:
        """Hold ``name``'s active version loaded (not evictable) while the block runs."""
        slot, engine = await self._acquire(name)
        try:
            yield Route(
                engine=engine, upstream_model=slot.upstream, public_model=name, adapter=name
            )
        finally:
            self._table.release(slot)

    def public_models(self) -> list[PublicModel]:
        base = self.engines[0].base_model
        return [
            PublicModel(
                id=record.name,
                created=int(record.created_at.timestamp()),
                owned_by="lora-gateway",
                parent=base,
            )
            for record in sorted(self._records.values(), key=lambda r: r.name)
        ]

    def registered_names(self) -> KeysView[str]:
        """A live view of the registered names (for bounding metric labels)."""
        return self._records.keys()

    def public_name_of(self, upstream: str) -> str | None:
        """The registered name behind an engine's LoRA name ``NAME@vN.<tag>`` (for metrics)."""
        name, at, _ = upstream.partition("@")
        return name if at and name in self._records else None

    def loaded_per_engine(self) -> Mapping[str, int]:
        """Engine name -> adapters loaded there (for the metrics' collector)."""
        return self._table.loaded_per_engine()

    async def _acquire(self, name: str) -> tuple[Slot, Engine]:
        record = self._records.get(name)
        if record is None:
            raise self.fetcher.unavailable(name) or unknown_model(name)
        # Fast path, no lock and no await: the active version is loaded on a current engine.
        slot = self._table.get(record.active.upstream_name)
        engine = self._table.pick_engine(slot) if slot is not None and slot.accepting else None
        if slot is None or engine is None:
            async with self._lock(name):
                record = self._records.get(name)
                if record is None:
                    raise unknown_model(name)
                slot = await self._ensure_loaded(record.active)
                engine = self._table.pick_engine(slot)
                if engine is None:
                    raise EngineUnavailableError(f"no ready engine holds adapter {name!r}")
        self._table.take(slot)
        return slot, engine

    def _lock(self, name: str) -> asyncio.Lock:
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    # --- loading and unloading (callers hold the name's lock) ---------------------------------
    async def _ensure_loaded(self, version: AdapterVersion) -> Slot:
        upstream = version.upstream_name
        failure = self._failed.get(upstream)
        wait_s = self._failed.remaining_s(upstream)
        if failure is not None and wait_s > 0:
            raise self._still_failed(version, failure, wait_s)
        ready = [engine for engine in self.engines if engine.ready]
        if not ready:
            raise EngineUnavailableError("no engine is ready to load adapters")
        slot = self._table.get(upstream)
        if slot is not None:
            slot.accepting = True
            slot.retiring = False
            current = self._table.current_engines(slot)
            missing = [e for e in ready if e.name not in current]
            if not missing:
                return slot
            slot.transition(AdapterState.LOADING)
        else:
            slot = await self._reserve(version)
            missing = ready
        await self._load_on(slot, missing)
        return slot

    async def _reserve(self, version: AdapterVersion) -> Slot:
        """A new LOADING slot for ``version``, evicting LRU adapters until one fits; waits up
        to ``slot_wait_s`` for requests in flight to release a slot."""
        deadline = self._clock() + self.slot_wait_s
        while self._table.full:
            victim = self._table.pick_victim(
                version.name, self._pinned, lambda name: self._lock(name).locked()
            )
            if victim is None:
                remaining = deadline - self._clock()
                if (
                    remaining <= 0
                    or all(self._pinned(s) for s in self._table)
                    or not await self._table.wait_freed(remaining)
                ):
                    raise self._capacity_error()
            elif victim.name == version.name:  # our own old version: we hold its lock
                await self._unload(victim, UnloadCause.REPLACED)
            else:
                async with self._lock(victim.name):
                    if self._table.evictable(victim, self._pinned):
                        await self._unload(victim, UnloadCause.EVICTED)
        return self._table.open(
            version.name, version.version, version.upstream_name, version.load_path
        )

    @staticmethod
    def _still_failed(version: AdapterVersion, failure: LoadFailure, wait_s: float) -> GatewayError:
        """The answer to a request for an adapter whose last load failed, within its cool-down."""
        retry_after = max(1, math.ceil(wait_s))
        if failure.refused:
            return AdapterLoadError(
                f"adapter {version.name!r} v{version.version} failed to load: {failure.reason}; "
                f"a request after {retry_after} s tries again "
                f"(POST /admin/adapters/{version.name}/load to retry now)",
                code="adapter_load_failed",
                headers={"Retry-After": str(retry_after)},
            )
        return EngineUnavailableError(
            f"adapter {version.name!r} could not be loaded just now ({failure.reason}); "
            f"retry in {retry_after} s",
            retry_after_s=retry_after,
        )

    def _capacity_error(self) -> CapacityError:
        busy = ", ".join(
            f"{s.upstream} ({'pinned' if self._pinned(s) else s.state}, {s.leases} in flight)"
            for s in self._table
        )
        return CapacityError(
            f"all {self.capacity} adapter slots are pinned or busy ({busy}); retry shortly, "
            "unpin an adapter or raise LORA_GATEWAY_MAX_CPU_LORAS",
            headers={"Retry-After": "1"},
        )

    def _pinned(self, slot: Slot) -> bool:
        record = self._records.get(slot.name)
        return (
            record is not None
            and record.pinned
            and not slot.retiring
            and record.active_version == slot.version
        )

    async def _load_on(self, slot: Slot, engines: list[Engine]) -> None:
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
        if refused is None and self._table.current_engines(slot):
            seconds = time.perf_counter() - started
            slot.transition(AdapterState.LOADED)
            self._failed.clear(slot.upstream)
            self._wanted[slot.name] = time.time()
            self.stats.loads += 1
            self.stats.load_seconds_total += seconds
            self.stats.load_seconds_max = max(self.stats.load_seconds_max, seconds)
            self.observer.on_load(slot.name, seconds)
            logger.info("adapter %s loaded in %.3f s", slot.upstream, seconds)
            await self._persist(slot.name, slot.version, AdapterState.LOADED)
            return
        self._table.remove(slot)
        if refused is not None:
            slot.transition(AdapterState.FAILED)
            await self._drop_from_engines(slot)
            self._failed.record(slot.upstream, refused, refused=True)
            self.stats.load_failures += 1
            self.observer.on_load_failed(slot.name)
            logger.warning("adapter %s failed to load: %s", slot.upstream, refused)
            await self._persist(slot.name, slot.version, AdapterState.FAILED, refused)
            raise AdapterLoadError(refused, code="engine_load_failed")
        slot.transition(AdapterState.REGISTERED)
        if engine_failed is not None:
            # Not marked failed for good: the engine may be busy or restarting. A short
            # cool-down keeps a broken adapter from turning every request into a load.
            self._failed.record(slot.upstream, engine_failed, refused=False)
            self.stats.load_failures += 1
            self.observer.on_load_failed(slot.name)
            logger.warning(
                "adapter %s: the engine failed to load it: %s", slot.upstream, engine_failed
            )
        raise EngineUnavailableError(
            f"no engine could load adapter {slot.name!r}: {'; '.join(unavailable)}"
        )

    async def _unload(self, slot: Slot, cause: UnloadCause) -> None:
        """Unload a drained slot from every engine that holds it; the slot is then gone."""
        slot.transition(AdapterState.UNLOADING)
        slot.accepting = False
        await self._drop_from_engines(slot)
        self._table.remove(slot)
        slot.transition(AdapterState.REGISTERED)
        self.stats.unloads += 1
        self.observer.on_unload(slot.name)
        if cause is UnloadCause.EVICTED:
            self.stats.evictions += 1
            self.observer.on_evict(slot.name)
        if cause in (UnloadCause.EVICTED, UnloadCause.REQUESTED):
            self._wanted.pop(slot.name, None)
        logger.info("adapter %s unloaded (%s)", slot.upstream, cause)
        if cause is not UnloadCause.DELETED:
            await self._persist(slot.name, slot.version, AdapterState.REGISTERED)

    async def _drop_from_engines(self, slot: Slot) -> None:
        for engine_name in self._table.current_engines(slot):
            engine = self._by_name[engine_name]
            try:
                await engine.client.unload_lora(slot.upstream)
            except AdapterNotFoundError:
                pass  # the engine no longer has it: the goal is reached
            except GatewayError as exc:
                logger.warning(
                    "engine %s could not unload %s: %s", engine_name, slot.upstream, exc.message
                )
        slot.engines.clear()

    async def _drain(self, slot: Slot, *, what: str) -> None:
        slot.accepting = False
        try:
            await asyncio.wait_for(slot.drained.wait(), self.drain_timeout_s)
        except TimeoutError as exc:
            slot.accepting = True
            raise ConflictError(
                f"cannot {what} adapter {slot.name!r}: {slot.leases} requests still in flight "
                f"after {self.drain_timeout_s:.0f} s; retry later",
                code="adapter_busy",
            ) from exc

    async def _persist(
        self, name: str, version: int, state: AdapterState, error: str | None = None
    ) -> None:
        try:
            await asyncio.to_thread(self.registry.set_state, name, version, state, error)
        except (GatewayError, AdapterError) as exc:  # live state is right; the record catches up
            logger.error(
                "could not record adapter %s v%d as %s: %s", name, version, state, exc.message
            )

    # --- operations behind the admin API -------------------------------------------------------
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
        new = NewVersion.from_layout(layout, base_model=self.engines[0].base_model)
        if origin is not None:
            new = replace(new, source_path=origin)
        async with self._lock(name):
            record = self._records.get(name)
            if record is not None:
                same = next(
                    (v for v in record.versions if v.same_content(new.sha256, new.config_sha256)),
                    None,
                )
                if same is not None and same.version != record.active_version and new_version:
                    self._failed.clear(same.upstream_name)
                    await self._activate(record, same.version, load=load)
                    return self.view(name), False
                if same is not None and same.version == record.active_version:
                    if pinned is not None and pinned != record.pinned:
                        await self._set_pinned_locked(record, pinned)
                    if load or pinned:
                        self._failed.clear(same.upstream_name)
                        await self._load_soft(self._records[name].active)
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
                self._records[name] = record
                await self._activate(record, record.latest_version, load=load)
                if pinned is not None and pinned != record.pinned:
                    await self._set_pinned_locked(self._records[name], pinned)
                return self.view(name), True
            if pinned:
                self._check_pin_room(name)
            record = await asyncio.to_thread(self.registry.add, name, new, pinned=bool(pinned))
            self._records[name] = record
            logger.info("adapter %s registered from %s", name, new.source_path)
            if load or pinned:
                try:
                    await self._load_soft(record.active)
                except AdapterLoadError:
                    # Refused by the engine on first sight: nothing worth keeping.
                    await asyncio.to_thread(self.registry.delete, name)
                    del self._records[name]
                    self._failed.clear(record.active.upstream_name)
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
            await self._ensure_loaded(version)
        except (EngineUnavailableError, CapacityError) as exc:
            self._wanted[version.name] = time.time()
            logger.info("adapter %s will load later: %s", version.name, exc.message)

    async def _activate(self, record: AdapterRecord, number: int, *, load: bool) -> None:
        """Make version ``number`` active; the old one serves its leases, then unloads."""
        old = record.active
        target = record.version(number)
        if target is None:
            raise AdapterNotFoundError(
                f"adapter {record.name!r} has no version {number}", param="version"
            )
        old_slot = self._table.get(old.upstream_name)
        if load or record.pinned or (old_slot is not None and old_slot.accepting):
            try:
                await self._ensure_loaded(target)
            except (CapacityError, EngineUnavailableError) as exc:
                logger.info(
                    "adapter %s v%d will load on first use (%s)", record.name, number, exc.message
                )
        self._records[record.name] = await asyncio.to_thread(
            self.registry.set_active, record.name, number
        )
        if old_slot is not None and old.version != number:
            old_slot.retiring = True
            old_slot.accepting = False
            task = asyncio.create_task(self._retire(old_slot))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        logger.info("adapter %s: version %d active (was %d)", record.name, number, old.version)

    async def _retire(self, slot: Slot) -> None:
        while True:
            await slot.drained.wait()
            async with self._lock(slot.name):
                if not slot.retiring or not self._table.holds(slot):
                    return
                if slot.leases == 0 and slot.state is AdapterState.LOADED:
                    await self._unload(slot, UnloadCause.REPLACED)
                    return
            await asyncio.sleep(_RETIRE_RECHECK_S)

    async def load(self, name: str) -> AdapterView:
        """Load the active version now (retrying a failed load); a no-op when loaded."""
        async with self._lock(name):
            record = self._get(name)
            self._failed.clear(record.active.upstream_name)
            await self._ensure_loaded(record.active)
            return self.view(name)

    async def unload(self, name: str) -> AdapterView:
        """Unload the active version once its requests drain; a no-op when not loaded."""
        async with self._lock(name):
            record = self._get(name)
            if record.pinned:
                raise ConflictError(
                    f"adapter {name!r} is pinned and stays loaded; unpin it first "
                    f'(PATCH /admin/adapters/{name} {{"pinned": false}})',
                    code="adapter_pinned",
                )
            slot = self._table.get(record.active.upstream_name)
            if slot is not None and slot.state is AdapterState.LOADED:
                await self._drain(slot, what="unload")
                # An engine restart may have dropped the slot while we waited.
                if self._table.holds(slot) and slot.state is AdapterState.LOADED:
                    await self._unload(slot, UnloadCause.REQUESTED)
            self._wanted.pop(name, None)
            return self.view(name)

    async def restore(self, name: str, version: int) -> AdapterView:
        """Make an earlier (or any registered) version active again, with the swap's care."""
        async with self._lock(name):
            record = self._get(name)
            target = record.version(version)
            if target is None:
                raise AdapterNotFoundError(
                    f"adapter {name!r} has no version {version}", param="version"
                )
            if version == record.active_version:
                return self.view(name)
            await asyncio.to_thread(self.store.verify, target)
            self._failed.clear(target.upstream_name)
            await self._activate(record, version, load=False)
            return self.view(name)

    async def set_pinned(self, name: str, pinned: bool) -> AdapterView:
        async with self._lock(name):
            await self._set_pinned_locked(self._get(name), pinned)
            if pinned:
                await self._load_soft(self._records[name].active)
            return self.view(name)

    async def _set_pinned_locked(self, record: AdapterRecord, pinned: bool) -> None:
        if pinned and not record.pinned:
            self._check_pin_room(record.name)
        self._records[record.name] = await asyncio.to_thread(
            self.registry.set_pinned, record.name, pinned
        )

    def _check_pin_room(self, name: str) -> None:
        pinned = [r.name for r in self._records.values() if r.pinned and r.name != name]
        if len(pinned) >= self.capacity:
            raise CapacityError(
                f"cannot pin {name!r}: {len(pinned)} of {self.capacity} adapter slots are "
                f"already pinned ({', '.join(sorted(pinned))}); unpin one first",
                code="pinned_capacity_exhausted",
            )

    async def delete(self, name: str) -> None:
        """Unload every version of ``name`` (after in-flight requests) and forget it."""
        fetching = await self.fetcher.cancel(name)
        async with self._lock(name):
            if fetching and name not in self._records:
                return
            record = self._get(name)
            slots = [s for s in self._table if s.name == name]
            for slot in slots:
                await self._drain(slot, what="delete")
            del self._records[name]
            for slot in slots:
                if self._table.holds(slot):
                    await self._unload(slot, UnloadCause.DELETED)
            await asyncio.to_thread(self.registry.delete, name)
            await asyncio.to_thread(self.store.collect, self._store_paths_in_use())
            for version in record.versions:
                self._failed.clear(version.upstream_name)
            self._wanted.pop(name, None)
            self.observer.on_delete(name)
            logger.info("adapter %s deleted", name)

    def _store_paths_in_use(self) -> list[str]:
        return [v.load_path for record in self._records.values() for v in record.versions]

    def _get(self, name: str) -> AdapterRecord:
        record = self._records.get(name)
        if record is None:
            raise AdapterNotFoundError(f"no adapter named {name!r} is registered", param="name")
        return record

    # --- views -----------------------------------------------------------------------------
    def view(self, name: str) -> AdapterView:
        record = self._get(name)
        versions = []
        for version in record.versions:
            slot = self._table.get(version.upstream_name)
            failure = self._failed.get(version.upstream_name)
            failed = failure.reason if failure is not None and failure.refused else None
            state = (
                slot.state
                if slot is not None
                else AdapterState.FAILED
                if failed is not None
                else AdapterState.REGISTERED
            )
            versions.append(
                VersionView(
                    version=version,
                    state=state,
                    last_error=failure.reason if failure is not None else version.last_error,
                    leases=slot.leases if slot is not None else 0,
                    engines=tuple(self._table.current_engines(slot)) if slot is not None else (),
                )
            )
        return AdapterView(record=record, versions=tuple(versions))

    def views(self) -> list[AdapterView]:
        return [self.view(name) for name in sorted(self._records)]

    # --- engine restarts -------------------------------------------------------------------
    async def on_engine_ready(self, engine: Engine) -> None:
        """The engine (re)started with no adapters: load the desired ones onto it again."""
        if self._closed:
            return
        self._forget_engine(engine)
        await self._reapply()
        logger.info(
            "engine %s ready: %d adapters loaded",
            engine.name,
            self.loaded_per_engine().get(engine.name, 0),
        )

    def _forget_engine(self, engine: Engine) -> None:
        now_wall, now = time.time(), self._clock()
        for slot in self._table.forget_engine(engine.name):
            # Held by no engine any more: remember it as wanted (by recency), free its slot.
            if not slot.retiring:
                self._wanted[slot.name] = now_wall - (now - slot.last_used)
            if slot.leases == 0:
                self._table.remove(slot)
                slot.transition(AdapterState.UNLOADING)
                slot.transition(AdapterState.REGISTERED)

    async def _reapply(self) -> None:
        """Load pinned adapters, then the most recently wanted ones, up to capacity."""
        pinned = {name for name, record in self._records.items() if record.pinned}
        wanted = sorted(self._wanted, key=lambda name: -self._wanted[name])
        names = [*sorted(pinned), *(name for name in wanted if name not in pinned)]
        for name in names[: self.capacity]:
            async with self._lock(name):
                record = self._records.get(name)
                if record is None or self._failed.remaining_s(record.active.upstream_name) > 0:
                    continue
                try:
                    await self._ensure_loaded(record.active)
                except (GatewayError, AdapterError) as exc:
                    logger.warning("re-applying adapter %s failed: %s", name, exc.message)
