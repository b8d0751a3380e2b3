"""The adapter lifecycle with 2 engines under each placement policy (FAKE engines of
tests/support/fake_engine.py: the real EngineClient over the one fake vLLM; real registry,
store and validator on adapter directories in the real formats)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from adapters.registry import Registry
from adapters.store import AdapterStore
from gateway.lifecycle.service import AdapterLifecycle
from gateway.placement.policy import PlacementPolicy
from gateway.placement.stats import PlacementEvent
from loadtest.fake_vllm import FakeVLLM
from tests.adapters.builders import lenient_validator, write_adapter, write_base_model
from tests.support.fake_engine import FakeEngine

BASE = "tinybase"

Make = Callable[..., Awaitable[AdapterLifecycle]]


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Make]:
    roots = (tmp_path / "adapters").resolve()
    roots.mkdir()
    base_dir = write_base_model(tmp_path / BASE)
    made: list[AdapterLifecycle] = []

    async def factory(
        engines: list[FakeEngine],
        policy: PlacementPolicy = PlacementPolicy.AFFINITY,
        *,
        adapters: int = 0,
        replicate_threshold: int = 4,
        slot_wait_s: float = 2.0,
    ) -> AdapterLifecycle:
        validator = lenient_validator(BASE, roots, base_dir)
        lifecycle = AdapterLifecycle(
            Registry(f"sqlite:///{tmp_path / 'registry.db'}"),
            list(engines),
            AdapterStore(tmp_path / "store", validator),
            policy=policy,
            replicate_threshold=replicate_threshold,
            slot_wait_s=slot_wait_s,
        )
        await lifecycle.start()
        made.append(lifecycle)
        for i in range(adapters):
            path = write_adapter(roots / f"a{i}", base_model=BASE, seed=i)
            await lifecycle.register(f"a{i}", path)
        return lifecycle

    yield factory
    for lifecycle in made:
        await lifecycle.close()


def two_engines(capacity: int = 2) -> list[FakeEngine]:
    return [
        FakeEngine(FakeVLLM(max_loaded=capacity), name=f"e{i}", lora_capacity=capacity)
        for i in range(2)
    ]


async def request(lifecycle: AdapterLifecycle, name: str, hold: float = 0.0) -> str:
    """One fake request: lease, check the engine holds the adapter, 'generate', release."""
    async with lifecycle.lease(name) as route:
        engine = route.engine
        assert isinstance(engine, FakeEngine)
        engine.upstream.serve(route.upstream_model)
        await asyncio.sleep(hold)
        return engine.name


def holders(lifecycle: AdapterLifecycle, name: str) -> tuple[str, ...]:
    return lifecycle.view(name).active.engines


def no_violations(engines: list[FakeEngine]) -> None:
    for engine in engines:
        assert engine.upstream.violations == [], engine.name


async def test_affinity_capacity_is_the_sum_and_each_adapter_lives_on_one_engine(
    make: Make,
) -> None:
    engines = two_engines()
    lifecycle = await make(engines, adapters=5)
    assert lifecycle.capacity == 4
    for name in ("a0", "a1", "a2", "a3"):
        await request(lifecycle, name)
    assert [len(e.upstream.loaded) for e in engines] == [2, 2]
    assert all(len(holders(lifecycle, f"a{i}")) == 1 for i in range(4))
    assert lifecycle.slots_used_per_engine() == {"e0": 2, "e1": 2}
    stats = lifecycle.placement_stats
    assert stats.total(PlacementEvent.LOAD) == 4 and stats.total(PlacementEvent.EVICTION) == 0
    # Resident: a hit on the engine that holds it, no load.
    assert await request(lifecycle, "a0") == holders(lifecycle, "a0")[0]
    assert stats.total(PlacementEvent.HIT) == 1 and stats.total(PlacementEvent.MISS) == 4
    # A fifth adapter evicts the stalest idle one (a1: a0 was just used), on its engine.
    stale_engine = holders(lifecycle, "a1")[0]
    assert await request(lifecycle, "a4") == stale_engine
    assert lifecycle.view("a1").active.engines == ()
    assert stats.total(PlacementEvent.EVICTION) == 1
    no_violations(engines)


async def test_replicate_loads_everywhere_and_holds_the_smallest_count(make: Make) -> None:
    engines = two_engines()
    lifecycle = await make(engines, PlacementPolicy.REPLICATE, adapters=3)
    assert lifecycle.capacity == 2
    for name in ("a0", "a1", "a2"):
        await request(lifecycle, name)
    assert [len(e.upstream.loaded) for e in engines] == [2, 2]
    assert sorted(holders(lifecycle, "a2")) == ["e0", "e1"]
    assert lifecycle.placement_stats.total(PlacementEvent.EVICTION) == 2  # a0 from both
    no_violations(engines)


async def test_requests_go_to_the_least_loaded_holder(make: Make) -> None:
    engines = two_engines()
    lifecycle = await make(engines, adapters=1, replicate_threshold=2)
    await request(lifecycle, "a0")
    first = holders(lifecycle, "a0")[0]
    # Two requests in flight on it: hot, so a copy goes onto the other engine in the background.
    held = [asyncio.create_task(request(lifecycle, "a0", hold=0.3)) for _ in range(2)]
    await asyncio.sleep(0.1)
    assert sorted(holders(lifecycle, "a0")) == ["e0", "e1"]
    assert lifecycle.placement_stats.total(PlacementEvent.REPLICATION) == 1
    # The next request goes to the copy: the first engine has 2 in flight, the other none.
    other = await request(lifecycle, "a0")
    assert other != first
    assert {await t for t in held} == {first}
    no_violations(engines)


async def test_a_dead_engine_loses_its_placements_and_rejoins_empty_pinned_first(
    make: Make,
) -> None:
    engines = two_engines()
    lifecycle = await make(engines, adapters=3)
    await lifecycle.set_pinned("a2", True)
    for name in ("a0", "a1"):
        await request(lifecycle, name)
    by_engine = {e.name: e for e in engines}
    victim = by_engine[holders(lifecycle, "a2")[0]]
    survivor = next(e for e in engines if e is not victim)
    on_victim = [n for n in ("a0", "a1", "a2") if holders(lifecycle, n) == (victim.name,)]
    victim.crash()
    # At once: nothing is resident there any more.
    assert lifecycle.slots_used_per_engine()[victim.name] == 0
    assert all(holders(lifecycle, n) == () for n in on_victim)
    # Its adapters load on demand on the survivor (evicting there as needed).
    for name in on_victim:
        if name != "a2":
            assert await request(lifecycle, name) == survivor.name
    await victim.come_back()
    # It rejoins empty and fills with pinned adapters first: a2 is resident again.
    assert holders(lifecycle, "a2") != ()
    assert await request(lifecycle, "a2") in {victim.name, survivor.name}
    assert len(victim.upstream.loaded) <= 2 and len(survivor.upstream.loaded) <= 2
    no_violations(engines)


async def test_a_lease_that_excludes_the_holder_loads_the_adapter_on_another_engine(
    make: Make,
) -> None:
    engines = two_engines()
    lifecycle = await make(engines, adapters=1)
    first = await request(lifecycle, "a0")
    async with lifecycle.lease("a0", exclude={first}) as route:
        assert route.engine.name != first
        assert isinstance(route.engine, FakeEngine)
        route.engine.upstream.serve(route.upstream_model)
    assert sorted(holders(lifecycle, "a0")) == ["e0", "e1"]
    no_violations(engines)


async def test_a_lease_bound_to_an_engine_loads_the_adapter_there(make: Make) -> None:
    engines = two_engines()
    lifecycle = await make(engines, adapters=1)
    first = await request(lifecycle, "a0")
    other = next(e.name for e in engines if e.name != first)
    async with lifecycle.lease("a0", engine=other) as route:
        assert route.engine.name == other
    assert sorted(holders(lifecycle, "a0")) == ["e0", "e1"]
    no_violations(engines)


async def test_a_request_for_a_resident_adapter_that_is_not_hot_reads_no_slot_snapshot(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (bench, 1,000 resident adapters over the fake: +1,550 ms added p50 at
    200 req/s, was +1.2 ms): every lease asked the policy whether to replicate with a snapshot
    of every slot of every engine, three quarters of the gateway's CPU at that size. A lease
    on a version that is not hot now looks at its own slot only."""
    engines = two_engines(capacity=4)
    lifecycle = await make(engines, adapters=3, replicate_threshold=2)
    for name in ("a0", "a1", "a2"):
        await request(lifecycle, name)
    snapshots = count_snapshots(lifecycle, monkeypatch)
    for _ in range(5):
        await request(lifecycle, "a0")
    assert snapshots() == 0  # (a hot version is still copied: test_requests_go_to_the_least_...)
    no_violations(engines)


async def test_a_hot_version_with_no_engine_to_copy_it_to_reads_no_slot_snapshot(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (same bench): with one engine, once requests queued every version looked
    hot, and each lease took the full snapshot to learn that there was nowhere to copy it:
    the more requests queued, the more CPU each one cost."""
    engine = FakeEngine(FakeVLLM(max_loaded=4), name="e0", lora_capacity=4)
    lifecycle = await make([engine], adapters=1, replicate_threshold=2)
    await request(lifecycle, "a0")
    snapshots = count_snapshots(lifecycle, monkeypatch)
    await asyncio.gather(*(request(lifecycle, "a0", hold=0.05) for _ in range(6)))
    assert snapshots() == 0
    no_violations([engine])


def count_snapshots(
    lifecycle: AdapterLifecycle, monkeypatch: pytest.MonkeyPatch
) -> Callable[[], int]:
    """From now on, count the slot table's snapshots (each walks every slot of every engine)."""
    calls = 0
    table = lifecycle._ctx.table
    take = table.snapshot

    def counted(*args: object, **kwargs: object) -> object:
        nonlocal calls
        calls += 1
        return take(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(table, "snapshot", counted)
    return lambda: calls
