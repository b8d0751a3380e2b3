"""gateway.lifecycle under cancellation and contention: the regression tests of issue 10's
lifecycle bugs 1, 5 and 6.

1. A client that hangs up (its task is cancelled) during a cold load or an eviction must not
   wedge a slot in ``loading``/``unloading``: engine loads and unloads finish on their own.
5. Requests waiting for a free slot wait side by side, not one behind another's lock.
6. An unload or delete that waits for a request in flight stalls nothing else, and answers
   either success (after the drain) or 409 with nothing changed.

And an admin client that hangs up does not leave its operation half done.

The engine is the FAKE vLLM of loadtest/fake_vllm (the real EngineClient over a mock
transport, with slow loads and unloads); registry and validator are real.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from adapters.registry import Registry
from adapters.state import AdapterState
from gateway.errors import CapacityError, ConflictError, ModelNotFoundError
from gateway.lifecycle.service import AdapterLifecycle
from loadtest.fake_vllm import FakeVLLM
from tests.adapters.builders import lenient_store, write_adapter, write_base_model
from tests.support.fake_engine import FakeEngine

BASE = "tinybase"


@pytest.fixture
async def built(tmp_path: Path) -> AsyncIterator[list[AdapterLifecycle]]:
    made: list[AdapterLifecycle] = []
    yield made
    for lifecycle in made:
        await lifecycle.close()


async def make(
    tmp_path: Path,
    made: list[AdapterLifecycle],
    upstream: FakeVLLM,
    *,
    capacity: int,
    slot_wait_s: float = 2.0,
    drain_timeout_s: float = 5.0,
) -> AdapterLifecycle:
    roots = (tmp_path / "adapters").resolve()
    roots.mkdir(exist_ok=True)
    lifecycle = AdapterLifecycle(
        Registry(f"sqlite:///{tmp_path / 'registry.db'}"),
        [FakeEngine(upstream)],
        lenient_store(tmp_path / "store", BASE, roots, write_base_model(tmp_path / BASE)),
        capacity=capacity,
        slot_wait_s=slot_wait_s,
        drain_timeout_s=drain_timeout_s,
    )
    await lifecycle.start()
    made.append(lifecycle)
    return lifecycle


async def register(lifecycle: AdapterLifecycle, tmp_path: Path, name: str, seed: int = 0) -> None:
    path = write_adapter(tmp_path / "adapters" / f"{name}-{seed}", base_model=BASE, seed=seed)
    await lifecycle.register(name, path, new_version=True)


async def request(lifecycle: AdapterLifecycle, name: str, hold: float = 0.0) -> str:
    async with lifecycle.lease(name) as route:
        engine = route.engine
        assert isinstance(engine, FakeEngine)
        engine.upstream.serve(route.upstream_model)
        await asyncio.sleep(hold)
        return route.upstream_model


def settled_states(lifecycle: AdapterLifecycle) -> dict[str, AdapterState]:
    return {
        f"{view.record.name} v{version.version.version}": version.state
        for view in lifecycle.views()
        for version in view.versions
    }


async def test_clients_hanging_up_during_loads_and_evictions_wedge_nothing(
    tmp_path: Path, built: list[AdapterLifecycle]
) -> None:
    upstream = FakeVLLM(max_loaded=2)
    upstream.load_delay_s = 0.02
    upstream.unload_delay_s = 0.02
    lifecycle = await make(tmp_path, built, upstream, capacity=2)
    names = ["a", "b", "c", "d"]
    for name in names:
        await register(lifecycle, tmp_path, name)

    rng = random.Random(10)
    for _ in range(40):
        # A cold request (a load, often after an eviction) whose client hangs up at a random
        # point; another request runs meanwhile so hang-ups also land in evictions it triggers.
        doomed = asyncio.create_task(request(lifecycle, rng.choice(names)))
        other = asyncio.create_task(request(lifecycle, rng.choice(names)))
        await asyncio.sleep(rng.uniform(0.0, 0.05))
        doomed.cancel()
        await asyncio.gather(doomed, other, return_exceptions=True)

    # Afterwards every adapter answers, and nothing is stuck half way.
    for name in names * 2:
        assert (await asyncio.wait_for(request(lifecycle, name), 5)).startswith(f"{name}@v1.")
    await asyncio.sleep(0.1)  # loads and unloads left behind by hang-ups have finished
    states = settled_states(lifecycle)
    assert set(states.values()) <= {AdapterState.LOADED, AdapterState.REGISTERED}, states
    loaded = {n for n, s in states.items() if s is AdapterState.LOADED}
    assert len(loaded) == len(upstream.loaded) <= 2
    assert upstream.violations == []

    # An admin DELETE works, and memory, the database and the engine agree.
    await asyncio.wait_for(lifecycle.delete("a"), 5)
    assert lifecycle.registry.get("a") is None
    assert "a" not in {m.id for m in lifecycle.public_models()}
    assert not any(upstream_name.startswith("a@") for upstream_name in upstream.loaded)
    for name in names[1:]:
        record = lifecycle.registry.get(name)
        assert record is not None
        assert lifecycle.view(name).active.state in (AdapterState.LOADED, AdapterState.REGISTERED)


async def test_hang_up_during_a_load_leaves_the_adapter_loaded_for_the_next_request(
    tmp_path: Path, built: list[AdapterLifecycle]
) -> None:
    upstream = FakeVLLM()
    upstream.load_delay_s = 0.1
    lifecycle = await make(tmp_path, built, upstream, capacity=1)
    await register(lifecycle, tmp_path, "a")
    await register(lifecycle, tmp_path, "b")
    await request(lifecycle, "a")
    upstream.unload_delay_s = 0.1

    # Hang up during the eviction of a (unloading) ...
    doomed = asyncio.create_task(request(lifecycle, "b"))
    await asyncio.sleep(0.05)
    assert lifecycle.view("a").active.state is AdapterState.UNLOADING
    doomed.cancel()
    await asyncio.gather(doomed, return_exceptions=True)
    # ... and during the load of b that follows.
    doomed = asyncio.create_task(request(lifecycle, "b"))
    await asyncio.sleep(0.1)  # the eviction's unload ends at 0.05, b's load takes until 0.15
    assert lifecycle.view("b").active.state is AdapterState.LOADING
    doomed.cancel()
    await asyncio.gather(doomed, return_exceptions=True)

    # The engine work finished without the client: b is loaded, once.
    assert (await asyncio.wait_for(request(lifecycle, "b"), 2)).startswith("b@v1.")
    assert upstream.count("load") == 2
    assert lifecycle.view("a").active.state is AdapterState.REGISTERED
    assert lifecycle.view("b").active.state is AdapterState.LOADED
    assert (await asyncio.wait_for(request(lifecycle, "a"), 2)).startswith("a@v1.")
    assert upstream.violations == []


async def test_requests_waiting_for_a_slot_wait_side_by_side(
    tmp_path: Path, built: list[AdapterLifecycle]
) -> None:
    slot_wait_s = 0.3
    upstream = FakeVLLM()
    lifecycle = await make(tmp_path, built, upstream, capacity=1, slot_wait_s=slot_wait_s)
    await register(lifecycle, tmp_path, "busy")
    await register(lifecycle, tmp_path, "cold")

    async with lifecycle.lease("busy"):  # the only slot is in use for the whole test
        started = time.perf_counter()
        outcomes = await asyncio.gather(
            *(request(lifecycle, "cold") for _ in range(4)), return_exceptions=True
        )
        elapsed = time.perf_counter() - started
    assert all(isinstance(o, CapacityError) for o in outcomes), outcomes
    # Each waited its own slot_wait_s at the same time: not 4 x slot_wait_s one after another.
    assert elapsed < 2 * slot_wait_s, elapsed

    # And once the slot frees, every waiter is served.
    lifecycle.slot_wait_s = 5.0
    async with lifecycle.lease("busy"):
        waiting = [asyncio.create_task(request(lifecycle, "cold")) for _ in range(4)]
        await asyncio.sleep(0.05)
        assert not any(task.done() for task in waiting)
    assert all(u.startswith("cold@v1.") for u in await asyncio.gather(*waiting))


async def test_delete_draining_a_request_stalls_no_other_adapter_or_admin_call(
    tmp_path: Path, built: list[AdapterLifecycle]
) -> None:
    upstream = FakeVLLM(max_loaded=2)
    lifecycle = await make(tmp_path, built, upstream, capacity=2, slot_wait_s=3.0)
    await register(lifecycle, tmp_path, "a", seed=1)
    await register(lifecycle, tmp_path, "c")
    release = asyncio.Event()

    async def in_flight() -> None:
        async with lifecycle.lease("a"):
            await release.wait()

    holder = asyncio.create_task(in_flight())
    await asyncio.sleep(0.01)
    await register(lifecycle, tmp_path, "a", seed=2)  # v2 active; v1 serves its request
    await lifecycle.load("a")  # both slots: a v1 (in flight), a v2 (idle)

    deleting = asyncio.create_task(lifecycle.delete("a"))
    await asyncio.sleep(0.05)
    assert not deleting.done()  # waits for the request in flight
    # Another adapter is served at once (a's idle v2 can make room), not after the drain.
    assert (await asyncio.wait_for(request(lifecycle, "c"), 1.0)).startswith("c@v1.")
    # An admin call on another adapter does not wait either.
    await asyncio.wait_for(lifecycle.unload("c"), 1.0)
    # A request for the adapter being deleted waits for the outcome: here, gone.
    late = asyncio.create_task(request(lifecycle, "a"))
    await asyncio.sleep(0.05)
    release.set()
    await asyncio.wait_for(asyncio.gather(holder, deleting), 2.0)
    with pytest.raises(ModelNotFoundError):
        await late
    assert lifecycle.registry.get("a") is None
    assert not any(u.startswith("a@") for u in upstream.loaded)
    assert upstream.violations == []


async def test_unload_with_a_request_in_flight_waits_then_succeeds_or_changes_nothing(
    tmp_path: Path, built: list[AdapterLifecycle]
) -> None:
    upstream = FakeVLLM()
    lifecycle = await make(tmp_path, built, upstream, capacity=3, drain_timeout_s=0.2)
    await register(lifecycle, tmp_path, "a")
    await register(lifecycle, tmp_path, "b")
    await request(lifecycle, "b")

    # The drain times out: 409, and nothing changed (a still loaded and serving, b untouched).
    async with lifecycle.lease("a"):
        with pytest.raises(ConflictError) as caught:
            await lifecycle.unload("a")
        assert caught.value.status == 409 and caught.value.code == "adapter_busy"
        assert (await asyncio.wait_for(request(lifecycle, "a"), 0.5)).startswith("a@")
    with pytest.raises(ConflictError):
        async with lifecycle.lease("a"), lifecycle.lease("b"):
            await lifecycle.delete("a")
    assert lifecycle.view("a").active.state is AdapterState.LOADED
    assert lifecycle.registry.get("a") is not None
    assert (await asyncio.wait_for(request(lifecycle, "a"), 0.5)).startswith("a@")

    # The drain finishes: the unload succeeds; meanwhile b is served without waiting.
    lifecycle.drain_timeout_s = 5.0
    release = asyncio.Event()

    async def in_flight() -> str:
        async with lifecycle.lease("a") as route:
            await release.wait()
            return route.upstream_model

    holder = asyncio.create_task(in_flight())
    await asyncio.sleep(0.01)
    unloading = asyncio.create_task(lifecycle.unload("a"))
    await asyncio.sleep(0.05)
    assert (await asyncio.wait_for(request(lifecycle, "b"), 0.5)).startswith("b@")
    await asyncio.wait_for(lifecycle.register("b", tmp_path / "adapters" / "b-0"), 0.5)
    release.set()
    view = await asyncio.wait_for(unloading, 1.0)
    await holder
    assert view.active.state is AdapterState.REGISTERED
    assert not any(u.startswith("a@") for u in upstream.loaded)

    # A new version of the adapter being unloaded is neither blocked nor unloaded by it.
    release = asyncio.Event()
    holder = asyncio.create_task(in_flight())
    await asyncio.sleep(0.01)
    unloading = asyncio.create_task(lifecycle.unload("a"))
    await asyncio.sleep(0.05)
    await asyncio.wait_for(register(lifecycle, tmp_path, "a", seed=5), 0.5)
    v2 = await asyncio.wait_for(request(lifecycle, "a"), 0.5)
    assert v2.startswith("a@v2.")
    release.set()
    await asyncio.wait_for(unloading, 1.0)
    v1 = await holder
    assert v1 not in upstream.loaded and v2 in upstream.loaded
    assert lifecycle.view("a").active.state is AdapterState.LOADED
    assert upstream.violations == []


async def test_admin_client_hanging_up_leaves_no_operation_half_done(
    tmp_path: Path, built: list[AdapterLifecycle]
) -> None:
    upstream = FakeVLLM()
    lifecycle = await make(tmp_path, built, upstream, capacity=2, slot_wait_s=0.5)
    await register(lifecycle, tmp_path, "a")
    release, holding = asyncio.Event(), asyncio.Event()

    async def in_flight() -> None:
        async with lifecycle.lease("a"):
            holding.set()
            await release.wait()

    holder = asyncio.create_task(in_flight())
    await asyncio.wait_for(holding.wait(), 10)
    deleting = asyncio.create_task(lifecycle.delete("a"))
    await asyncio.sleep(0.05)  # the delete waits for the request in flight
    deleting.cancel()  # its admin client hangs up
    await asyncio.gather(deleting, return_exceptions=True)
    release.set()
    await holder
    # The delete finishes without its caller (polled: a busy machine may take a while).
    for _ in range(200):
        if lifecycle.registry.get("a") is None and not upstream.loaded:
            break
        await asyncio.sleep(0.05)
    # Memory, database and engine agree.
    assert lifecycle.registry.get("a") is None and lifecycle.public_models() == []
    assert upstream.loaded == {}
    with pytest.raises(ModelNotFoundError):
        await request(lifecycle, "a")
