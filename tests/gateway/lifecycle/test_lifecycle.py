"""gateway.lifecycle.service in-process: state machine, LRU with pinned and in-flight, versions,
restarts.

The engine is the FAKE vLLM of loadtest/fake_vllm (real EngineClient over a mock
transport); the registry and validator are real, on adapter directories in the real formats.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from adapters.contract import ADAPTER_WEIGHTS
from adapters.errors import AdapterError
from adapters.registry import Registry
from adapters.state import AdapterState
from adapters.store import AdapterStore
from gateway.errors import (
    AdapterLoadError,
    AdapterNotFoundError,
    CapacityError,
    ConflictError,
    EngineUnavailableError,
    ModelNotFoundError,
)
from gateway.lifecycle.service import AdapterLifecycle
from loadtest.fake_vllm import FakeVLLM
from tests.adapters.builders import lenient_validator, write_adapter, write_base_model
from tests.support.fake_engine import FakeEngine

BASE = "tinybase"


@dataclass
class Env:
    roots: Path
    base_dir: Path
    db_url: str

    def adapter(self, name: str, seed: int = 0, **kwargs: object) -> Path:
        return write_adapter(self.roots / f"{name}-{seed}", base_model=BASE, seed=seed, **kwargs)  # type: ignore[arg-type]


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def on_load(self, name: str, seconds: float) -> None:
        assert seconds >= 0
        self.seen.append(("load", name))

    def on_unload(self, name: str) -> None:
        self.seen.append(("unload", name))

    def on_evict(self, name: str) -> None:
        self.seen.append(("evict", name))

    def on_load_failed(self, name: str) -> None:
        self.seen.append(("load_failed", name))

    def on_delete(self, name: str) -> None:
        self.seen.append(("delete", name))


MakeLifecycle = Callable[..., Awaitable[AdapterLifecycle]]


@pytest.fixture
def env(tmp_path: Path, db_url: str) -> Env:
    roots = tmp_path / "adapters"
    roots.mkdir()
    return Env(
        roots=roots.resolve(),
        base_dir=write_base_model(tmp_path / BASE),
        db_url=db_url,  # SQLite and PostgreSQL (tests/conftest.py)
    )


@pytest.fixture
async def make(env: Env) -> AsyncIterator[MakeLifecycle]:
    made: list[AdapterLifecycle] = []

    async def factory(
        *engines: FakeEngine,
        capacity: int | None = None,
        observer: Events | None = None,
        drain_timeout_s: float = 2.0,
        slot_wait_s: float = 5.0,
    ) -> AdapterLifecycle:
        validator = lenient_validator(BASE, env.roots, env.base_dir)
        lifecycle = AdapterLifecycle(
            Registry(env.db_url),
            list(engines),
            AdapterStore(env.roots.parent / "store", validator),
            capacity=capacity,
            observer=observer,
            drain_timeout_s=drain_timeout_s,
            slot_wait_s=slot_wait_s,
        )
        await lifecycle.start()
        made.append(lifecycle)
        return lifecycle

    yield factory
    for lifecycle in made:
        await lifecycle.close()


async def request(lifecycle: AdapterLifecycle, name: str, hold: float = 0.0) -> str:
    """One fake request: lease, check the engine has the adapter, 'generate', release."""
    async with lifecycle.lease(name) as route:
        engine = route.engine
        assert isinstance(engine, FakeEngine)
        engine.upstream.serve(route.upstream_model)
        await asyncio.sleep(hold)
        return route.upstream_model


async def test_loads_on_first_request_and_lists_models(env: Env, make: MakeLifecycle) -> None:
    upstream = FakeVLLM()
    events = Events()
    lifecycle = await make(FakeEngine(upstream), observer=events)
    view, created = await lifecycle.register("a1", env.adapter("a1"))
    assert created and view.active.state is AdapterState.REGISTERED
    assert upstream.calls == []
    assert [(m.id, m.parent) for m in lifecycle.public_models()] == [("a1", BASE)]

    first = await request(lifecycle, "a1")
    assert first.startswith("a1@v1.")
    assert await request(lifecycle, "a1") == first
    assert upstream.count("load") == 1
    assert lifecycle.view("a1").active.state is AdapterState.LOADED
    assert lifecycle.view("a1").active.engines == ("fake",)
    assert lifecycle.loaded_per_engine() == {"fake": 1}
    assert "a1" in lifecycle.registered_names()
    assert events.seen == [("load", "a1")]
    with pytest.raises(ModelNotFoundError):
        await request(lifecycle, "nobody")


async def test_register_with_load_and_idempotent_operations(env: Env, make: MakeLifecycle) -> None:
    upstream = FakeVLLM()
    lifecycle = await make(FakeEngine(upstream))
    path = env.adapter("a1")
    await lifecycle.register("a1", path, load=True)
    again, created = await lifecycle.register("a1", path, load=True)
    assert not created and again.record.active_version == 1
    await lifecycle.load("a1")
    assert upstream.count("load") == 1
    await lifecycle.unload("a1")
    await lifecycle.unload("a1")
    assert upstream.count("unload") == 1
    assert lifecycle.view("a1").active.state is AdapterState.REGISTERED
    assert upstream.loaded == {}


async def test_lru_eviction_skips_pinned_and_in_flight(env: Env, make: MakeLifecycle) -> None:
    upstream = FakeVLLM(max_loaded=2)
    events = Events()
    lifecycle = await make(FakeEngine(upstream), capacity=2, observer=events, slot_wait_s=0.1)
    for name in ("a", "b", "c", "d"):
        await lifecycle.register(name, env.adapter(name))

    await request(lifecycle, "a")
    await request(lifecycle, "b")
    await request(lifecycle, "a")  # b is now the least recently used
    await request(lifecycle, "c")
    loaded = {lifecycle.view(n).active.state for n in "ab"}
    assert lifecycle.view("b").active.state is AdapterState.REGISTERED
    assert lifecycle.view("a").active.state is AdapterState.LOADED
    assert loaded == {AdapterState.LOADED, AdapterState.REGISTERED}
    assert [e for e in events.seen if e[0] == "evict"] == [("evict", "b")]

    # A request in flight holds its adapter: the other one (c... LRU is a) must go instead.
    async with lifecycle.lease("a"):
        await request(lifecycle, "d")
        assert lifecycle.view("a").active.state is AdapterState.LOADED
        assert lifecycle.view("c").active.state is AdapterState.REGISTERED
        # Both slots busy: b waits for one (slot_wait_s), then gets a 503.
        async with lifecycle.lease("d"):
            with pytest.raises(CapacityError) as caught:
                await request(lifecycle, "b")
            assert caught.value.status == 503 and "Retry-After" in caught.value.headers

        # A request that waits for a slot gets it as soon as one is released.
        lifecycle.slot_wait_s = 5.0
        async with lifecycle.lease("d"):
            waiting = asyncio.create_task(request(lifecycle, "b"))
            await asyncio.sleep(0.05)
            assert not waiting.done()
        assert (await waiting).startswith("b@")

    # Pinned adapters are never evicted, and pinning cannot take every slot.
    await lifecycle.set_pinned("a", True)
    await request(lifecycle, "b")
    await request(lifecycle, "c")
    assert lifecycle.view("a").active.state is AdapterState.LOADED
    await lifecycle.register("p2", env.adapter("p2"), pinned=True)
    with pytest.raises(CapacityError, match="already pinned"):
        await lifecycle.register("p3", env.adapter("p3"), pinned=True)
    with pytest.raises(ConflictError, match="pinned"):
        await lifecycle.unload("a")
    assert upstream.violations == [] and upstream.peak_loaded == 2


async def test_concurrent_requests_never_exceed_capacity(env: Env, make: MakeLifecycle) -> None:
    upstream = FakeVLLM(max_loaded=2)
    upstream.load_delay_s = 0.01
    events = Events()
    lifecycle = await make(FakeEngine(upstream), capacity=2, observer=events)
    names = [f"n{i}" for i in range(5)]
    for name in names:
        await lifecycle.register(name, env.adapter(name))

    # 120 concurrent requests over 5 adapters and 2 slots: each waits for a slot, none fails.
    served = await asyncio.gather(
        *(request(lifecycle, names[i % len(names)], hold=0.002) for i in range(120))
    )
    assert len(served) == 120
    assert upstream.violations == []
    assert upstream.peak_loaded <= 2
    kinds = [kind for kind, _ in events.seen]
    assert kinds.count("evict") > 0
    assert kinds.count("load") - kinds.count("unload") == len(upstream.loaded)


async def test_conflict_new_version_swap_drains_then_restore(env: Env, make: MakeLifecycle) -> None:
    upstream = FakeVLLM()
    lifecycle = await make(FakeEngine(upstream), capacity=3)
    v1_path, v2_path = env.adapter("a", seed=1), env.adapter("a", seed=2)
    await lifecycle.register("a", v1_path, load=True)
    with pytest.raises(ConflictError) as caught:
        await lifecycle.register("a", v2_path)
    assert caught.value.status == 409 and "new_version" in caught.value.message

    async with lifecycle.lease("a") as in_flight:
        v1 = in_flight.upstream_model
        view, created = await lifecycle.register("a", v2_path, new_version=True)
        assert created and view.record.active_version == 2
        v2 = await request(lifecycle, "a")
        assert v2 != v1 and v2.startswith("a@v2.")
        # The old version still serves the request that leased it.
        upstream.serve(v1)
        assert v1 in upstream.loaded
        assert lifecycle.view("a").versions[0].state is AdapterState.LOADED
    for _ in range(100):
        if v1 not in upstream.loaded:
            break
        await asyncio.sleep(0.01)
    assert v1 not in upstream.loaded and v2 in upstream.loaded
    assert upstream.violations == []

    restored = await lifecycle.restore("a", 1)
    assert restored.record.active_version == 1
    assert await request(lifecycle, "a") == v1
    # Registering v2's files again with new_version re-activates v2 instead of a v3.
    view, created = await lifecycle.register("a", v2_path, new_version=True)
    assert not created and view.record.active_version == 2 and len(view.versions) == 2
    with pytest.raises(AdapterNotFoundError):
        await lifecycle.restore("a", 9)


def damage(stored: Path) -> None:
    """Someone with the gateway's own rights rewrites a stored copy."""
    stored.chmod(0o700)
    (stored / ADAPTER_WEIGHTS).unlink()
    write_adapter(stored, base_model=BASE, seed=98)


async def test_restore_ignores_the_source_but_refuses_a_damaged_copy(
    env: Env, make: MakeLifecycle
) -> None:
    lifecycle = await make(FakeEngine(FakeVLLM()))
    v1_path = env.adapter("a", seed=1)
    await lifecycle.register("a", v1_path)
    await lifecycle.register("a", env.adapter("a", seed=2), new_version=True)
    write_adapter(v1_path, base_model=BASE, seed=99)  # the source is overwritten in place
    assert (await lifecycle.restore("a", 1)).record.active_version == 1  # its copy serves
    await lifecycle.restore("a", 2)

    damage(Path(lifecycle.view("a").versions[0].version.load_path))
    with pytest.raises(AdapterError, match="changed since") as caught:
        await lifecycle.restore("a", 1)
    assert caught.value.code == "adapter_files_changed"


async def test_register_with_load_refused_keeps_nothing(env: Env, make: MakeLifecycle) -> None:
    upstream = FakeVLLM()
    lifecycle = await make(FakeEngine(upstream))
    path = env.adapter("a")
    upstream.refuse_names.add("a")
    with pytest.raises(AdapterLoadError):
        await lifecycle.register("a", path, load=True)
    assert lifecycle.public_models() == [] and lifecycle.registry.get("a") is None


async def test_engine_down_is_503_and_state_stays_registered(env: Env, make: MakeLifecycle) -> None:
    upstream = FakeVLLM()
    lifecycle = await make(FakeEngine(upstream))
    await lifecycle.register("a", env.adapter("a"))
    upstream.unreachable = True
    with pytest.raises(EngineUnavailableError) as caught:
        await request(lifecycle, "a")
    assert caught.value.status == 503
    assert lifecycle.view("a").active.state is AdapterState.REGISTERED
    # Registration with load while the engine is unreachable succeeds; it loads later.
    view, _ = await lifecycle.register("b", env.adapter("b"), load=True)
    assert view.active.state is AdapterState.REGISTERED
    upstream.unreachable = False
    assert await request(lifecycle, "a")


async def test_new_lifecycle_on_same_db_keeps_registrations_and_loads(
    env: Env, make: MakeLifecycle
) -> None:
    first = await make(FakeEngine(FakeVLLM()), capacity=2)
    await first.register("kept", env.adapter("kept"), load=True)
    await first.register("pinned", env.adapter("pinned"), pinned=True)
    await first.register("idle", env.adapter("idle"))
    await first.close()

    upstream = FakeVLLM()  # a fresh engine that knows nothing
    second = await make(FakeEngine(upstream), capacity=2)
    assert [m.id for m in second.public_models()] == ["idle", "kept", "pinned"]
    assert second.view("pinned").record.pinned
    assert {name.split("@")[0] for name in upstream.loaded} == {"kept", "pinned"}
    assert await request(second, "idle")
    assert upstream.violations == []


async def test_engine_restart_reapplies_without_api_calls(env: Env, make: MakeLifecycle) -> None:
    upstream = FakeVLLM()
    engine = FakeEngine(upstream)
    lifecycle = await make(engine, capacity=2)
    await lifecycle.register("pin", env.adapter("pin"), pinned=True)
    await lifecycle.register("a", env.adapter("a"))
    await lifecycle.register("b", env.adapter("b"))
    await request(lifecycle, "a")
    await request(lifecycle, "b")  # evicts a? no: pin + a fill 2 slots, so a goes
    assert {n.split("@")[0] for n in upstream.loaded} == {"pin", "b"}

    engine.crash()
    with pytest.raises(EngineUnavailableError):
        await request(lifecycle, "b")
    await engine.come_back()  # ready listener fires
    assert {n.split("@")[0] for n in upstream.loaded} == {"pin", "b"}
    assert await request(lifecycle, "b")
    assert upstream.violations == []

    # A restart whose listener has not run yet is detected by the restart count: the next
    # request reloads instead of being sent to an engine that forgot the adapter.
    engine.crash()
    await engine.come_back(notify=False)
    assert await request(lifecycle, "b")
    assert upstream.violations == []


async def test_delete_waits_for_requests_then_forgets(env: Env, make: MakeLifecycle) -> None:
    upstream = FakeVLLM()
    lifecycle = await make(FakeEngine(upstream), drain_timeout_s=0.2)
    await lifecycle.register("a", env.adapter("a"), load=True)
    async with lifecycle.lease("a"):
        with pytest.raises(ConflictError, match="in flight"):
            await lifecycle.delete("a")
    release = asyncio.Event()

    async def long_request() -> None:
        async with lifecycle.lease("a"):
            await release.wait()

    task = asyncio.create_task(long_request())
    await asyncio.sleep(0.01)
    lifecycle.drain_timeout_s = 5
    deleting = asyncio.create_task(lifecycle.delete("a"))
    await asyncio.sleep(0.05)
    assert not deleting.done() and upstream.loaded  # waits for the request in flight
    release.set()
    await asyncio.gather(task, deleting)
    assert upstream.loaded == {}
    assert lifecycle.public_models() == [] and lifecycle.registry.get("a") is None
    with pytest.raises(ModelNotFoundError):
        await request(lifecycle, "a")
    with pytest.raises(AdapterNotFoundError):
        await lifecycle.delete("a")


async def test_validation_errors_pass_through(env: Env, make: MakeLifecycle) -> None:
    lifecycle = await make(FakeEngine(FakeVLLM()))
    with pytest.raises(AdapterError) as caught:
        await lifecycle.register(BASE, env.adapter("x"))
    assert caught.value.code == "name_is_base_model"
    with pytest.raises(AdapterError) as caught:
        await lifecycle.register("x", env.adapter("x", r=32))
    assert caught.value.code == "rank_exceeds_max"
