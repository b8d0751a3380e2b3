"""Two gateway replicas (two adapter lifecycles, each with its own registry connection, engine
objects and sync loop) in front of the same engines, sharing one database and its placement
board (:mod:`gateway.placement.board`, :mod:`gateway.lifecycle.replicas`).

The engines are the FAKE vLLM (tests/support/fake_engine.py) shared by both replicas, with a cap
on loaded adapters that records every violation; the database is a SQLite file or a throwaway
PostgreSQL (tests/conftest.py). Fast sync intervals keep this quick.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from adapters.registry import Registry
from adapters.store import AdapterStore
from adapters.validation import AdapterValidator, ValidationLimits
from gateway.errors import GatewayError, ModelNotFoundError
from gateway.lifecycle.service import AdapterLifecycle
from gateway.placement.board import SharedBoard
from gateway.placement.stats import PlacementEvent
from loadtest.fake_vllm import FakeVLLM
from tests.adapters.builders import write_adapter, write_base_model
from tests.support.fake_engine import FakeEngine

BASE = "tinybase"
SYNC_S = 0.05

Make = Callable[..., Awaitable[AdapterLifecycle]]


@pytest.fixture
def upstreams() -> list[FakeVLLM]:
    return [FakeVLLM(max_loaded=2) for _ in range(2)]


@pytest.fixture
async def make(tmp_path: Path, upstreams: list[FakeVLLM], db_url: str) -> AsyncIterator[Make]:
    """``make("A")``: a replica over the shared fake engines and database (SQLite file or
    PostgreSQL: the ``db_url`` fixture runs each test on both)."""
    roots = (tmp_path / "adapters").resolve()
    roots.mkdir()
    base_dir = write_base_model(tmp_path / BASE)
    url = db_url
    made: list[AdapterLifecycle] = []

    async def factory(
        replica_id: str, *, engines: int = 2, slot_wait_s: float = 5.0, dead_after_s: float = 5.0
    ) -> AdapterLifecycle:
        validator = AdapterValidator(
            BASE, ValidationLimits(16, 1 << 30, (roots,)), base_dir=base_dir
        )
        board = await asyncio.to_thread(
            SharedBoard.open,
            url,
            replica_id,
            dead_after_s=dead_after_s,
            release_timeout_s=1.0,
            poll_s=0.02,
        )
        lifecycle = AdapterLifecycle(
            Registry(url),
            [
                FakeEngine(upstream, name=f"e{i}", lora_capacity=2)
                for i, upstream in enumerate(upstreams[:engines])
            ],
            AdapterStore(tmp_path / "store", validator),
            slot_wait_s=slot_wait_s,
            board=board,
            sync_interval_s=SYNC_S,
        )
        await lifecycle.start()
        made.append(lifecycle)
        return lifecycle

    yield factory
    for lifecycle in made:
        await lifecycle.close()


@pytest.fixture
def adapter_dir(tmp_path: Path) -> Callable[[str, int], Path]:
    def write(name: str, seed: int) -> Path:
        return write_adapter(
            (tmp_path / "adapters").resolve() / f"{name}-{seed}", base_model=BASE, seed=seed
        )

    return write


async def request(lifecycle: AdapterLifecycle, name: str, hold: float = 0.0) -> str:
    """One fake request: lease, check the engine holds the version now and after, release."""
    async with lifecycle.lease(name) as route:
        engine = route.engine
        assert isinstance(engine, FakeEngine)
        engine.upstream.serve(route.upstream_model)
        await asyncio.sleep(hold)
        engine.upstream.serve(route.upstream_model)
        return engine.name


async def eventually(check: Callable[[], bool], within_s: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "not within the bound"
        await asyncio.sleep(0.01)


def loads(upstreams: list[FakeVLLM]) -> int:
    return sum(u.count("load") for u in upstreams)


async def test_a_version_loaded_by_one_replica_is_resident_for_the_other(
    make: Make, adapter_dir: Callable[[str, int], Path], upstreams: list[FakeVLLM]
) -> None:
    a, b = await make("A"), await make("B")
    await a.register("x", adapter_dir("x", 1))
    await eventually(lambda: "x" in b.registered_names())
    await request(a, "x")
    assert loads(upstreams) == 1
    # B learns where A loaded it from the board: a hit, no second load.
    await eventually(lambda: bool(b.view("x").active.engines))
    await request(b, "x")
    assert loads(upstreams) == 1
    assert b.placement_stats.total(PlacementEvent.HIT) == 1
    assert b.placement_stats.total(PlacementEvent.LOAD) == 0
    views = await b.replica_views()
    assert [(v.id, v.this, v.live) for v in views] == [("B", True, True), ("A", False, True)]


async def test_registry_changes_reach_the_other_replica_within_two_seconds(
    make: Make, adapter_dir: Callable[[str, int], Path], upstreams: list[FakeVLLM]
) -> None:
    a, b = await make("A"), await make("B")
    await a.register("x", adapter_dir("x", 1))
    await eventually(lambda: "x" in b.registered_names())
    await request(b, "x")
    await a.register("x", adapter_dir("x", 2), new_version=True)
    await eventually(lambda: b.view("x").record.active_version == 2)
    async with b.lease("x") as route:
        assert route.version == 2
    await a.restore("x", 1)
    await eventually(lambda: b.view("x").record.active_version == 1)
    await a.set_pinned("x", True)
    await eventually(lambda: b.view("x").record.pinned)
    await a.delete("x")
    await eventually(lambda: "x" not in b.registered_names())
    with pytest.raises(ModelNotFoundError):
        await request(b, "x")
    # Nothing of x is left on any engine.
    await eventually(lambda: not any(u.loaded for u in upstreams))
    assert not any(u.violations for u in upstreams)


async def test_no_engine_holds_more_than_its_slots_under_two_replicas(
    make: Make, adapter_dir: Callable[[str, int], Path], upstreams: list[FakeVLLM]
) -> None:
    a, b = await make("A"), await make("B")
    names = [f"n{i}" for i in range(8)]
    for i, name in enumerate(names):
        await (a if i % 2 else b).register(name, adapter_dir(name, i))
    await eventually(lambda: all(n in a.registered_names() for n in names))
    await eventually(lambda: all(n in b.registered_names() for n in names))
    rng = random.Random(7)
    failures: list[BaseException] = []

    async def client(replica: AdapterLifecycle, count: int) -> None:
        for _ in range(count):
            name = names[min(int(rng.paretovariate(1.1)) - 1, len(names) - 1)]
            try:
                await request(replica, name, hold=rng.uniform(0, 0.02))
            except GatewayError as exc:
                failures.append(exc)

    await asyncio.gather(*(client(r, 25) for r in (a, b, a, b)))
    assert failures == []
    assert [u.violations for u in upstreams] == [[], []]
    assert max(u.peak_loaded for u in upstreams) <= 2


async def test_a_version_in_flight_on_another_replica_is_not_unloaded(
    make: Make, adapter_dir: Callable[[str, int], Path], upstreams: list[FakeVLLM]
) -> None:
    a = await make("A", engines=1, slot_wait_s=3.0)
    b = await make("B", engines=1, slot_wait_s=3.0)
    for i, name in enumerate(("x", "y", "z")):
        await a.register(name, adapter_dir(name, i))
    await eventually(lambda: "z" in b.registered_names())
    await request(b, "x")
    await request(b, "y")  # e0's two slots: x and y
    await eventually(lambda: len(a.view("x").active.engines) == 1)
    await eventually(lambda: len(a.view("y").active.engines) == 1)
    # B holds x and y for a while; A needs a slot for z: it must wait for B, not evict.
    held = asyncio.gather(request(b, "x", hold=0.6), request(b, "y", hold=0.9))
    await asyncio.sleep(0.15)
    assert await request(a, "z") == "e0"
    await held  # B's requests saw their version loaded from start to end
    assert upstreams[0].violations == []
    assert "z" in " ".join(upstreams[0].loaded)


async def test_a_dead_replica_does_not_hold_versions_forever(
    make: Make, adapter_dir: Callable[[str, int], Path], upstreams: list[FakeVLLM]
) -> None:
    a = await make("A", engines=1, slot_wait_s=4.0, dead_after_s=0.5)
    b = await make("B", engines=1, slot_wait_s=4.0, dead_after_s=0.5)
    for i, name in enumerate(("x", "y", "z")):
        await a.register(name, adapter_dir(name, i))
    await eventually(lambda: "z" in b.registered_names())
    await request(b, "x")
    await request(b, "y")
    lease = b.lease("x")
    await lease.__aenter__()  # B is "killed" with a request in flight: no more heartbeats
    assert b.replicas is not None
    await b._ctx.cancel_all()
    await eventually(lambda: "x" in "".join(upstreams[0].loaded))
    assert await request(a, "z") == "e0"  # after B's heartbeat went stale
    assert len(upstreams[0].loaded) <= 2


async def test_an_engine_restart_is_seen_by_both_replicas(
    make: Make, adapter_dir: Callable[[str, int], Path], upstreams: list[FakeVLLM]
) -> None:
    a, b = await make("A"), await make("B")
    await a.register("x", adapter_dir("x", 1))
    await eventually(lambda: "x" in b.registered_names())
    await request(a, "x")
    await eventually(lambda: bool(b.view("x").active.engines))
    holder = a.view("x").active.engines[0]
    for replica in (a, b):
        for engine in replica.engines:
            if engine.name == holder:
                assert isinstance(engine, FakeEngine)
                engine.crash()
    for replica in (a, b):
        for engine in replica.engines:
            if engine.name == holder:
                assert isinstance(engine, FakeEngine)
                await engine.come_back()
    # Both replicas serve x again, loaded anew, and never route to an engine without it.
    await request(b, "x")
    await request(a, "x")
    assert not any(u.violations for u in upstreams)
