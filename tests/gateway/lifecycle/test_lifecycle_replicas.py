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
from gateway.errors import GatewayError, ModelNotFoundError
from gateway.lifecycle.service import AdapterLifecycle
from gateway.placement.board import PlacementBoard, SharedBoard
from gateway.placement.stats import PlacementEvent
from loadtest.fake_vllm import FakeVLLM
from tests.adapters.builders import (
    lenient_store,
    lenient_validator,
    write_adapter,
    write_base_model,
)
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
        validator = lenient_validator(BASE, roots, base_dir)
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


class DrainedWhilePresent(PlacementBoard):
    """A board whose first claim answers "present" (another replica loaded it there) while
    that replica's drain mark reaches this one's slot table during the claim: the race seen
    in the real two-replica churn test."""

    shared = True

    def __init__(self) -> None:
        self.lifecycle: AdapterLifecycle | None = None
        self.claims = 0

    async def claim(self, engine_url: str, upstream: str, capacity: int) -> bool:
        self.claims += 1
        if self.claims > 1:
            return True
        assert self.lifecycle is not None
        slot = self.lifecycle._ctx.table.get(upstream)
        assert slot is not None
        slot.blocked.update(e.name for e in self.lifecycle.engines if e.url == engine_url)
        return False


async def test_a_place_drained_by_another_replica_during_the_claim_is_waited_for(
    tmp_path: Path, adapter_dir: Callable[[str, int], Path], upstreams: list[FakeVLLM]
) -> None:
    """Regression: the claim found the version loaded there, then the other replica's drain
    mark was applied: the load ended with no current engine and nothing failed, and the request
    got 503 "no engine could load adapter ... just now". It now waits and claims again."""
    roots = (tmp_path / "adapters").resolve()
    board = DrainedWhilePresent()
    lifecycle = AdapterLifecycle(
        Registry(f"sqlite:///{tmp_path / 'solo.db'}"),
        [FakeEngine(upstreams[0], name="e0", lora_capacity=2)],
        lenient_store(tmp_path / "store", BASE, roots, write_base_model(tmp_path / BASE)),
        slot_wait_s=5.0,
        board=board,
    )
    board.lifecycle = lifecycle
    await lifecycle.start()
    try:
        await lifecycle.register("x", adapter_dir("x", 1))
        assert await request(lifecycle, "x") == "e0"
        assert board.claims == 2
    finally:
        await lifecycle.close()


async def test_places_another_replica_is_loading_count_as_taken_here(
    make: Make, adapter_dir: Callable[[str, int], Path], upstreams: list[FakeVLLM]
) -> None:
    """Regression (real two-replica churn test): places another replica was still loading (or
    held for versions this one did not know yet) were invisible in this replica's slot table,
    so it saw a free slot, claimed, was refused, and claimed again in a tight loop, never
    evicting, until its wait ran out (503 "no adapter slot is free"). They now count as taken
    here: it waits for them (or evicts what it can see) instead."""
    a = await make("A", engines=1, slot_wait_s=1.0)
    b = await make("B", engines=1)
    await a.register("x", adapter_dir("x", 1))
    engine_url = a.engines[0].url
    board_b = b._ctx.board
    assert isinstance(board_b, SharedBoard)
    for ghost in ("ghost-1@v1.aaaa", "ghost-2@v1.bbbb"):  # B is "loading" these, slowly
        assert await board_b.claim(engine_url, ghost, 2)
    board_a = a._ctx.board
    claims = 0
    claim = board_a.claim

    async def counted(url: str, upstream: str, capacity: int) -> bool:
        nonlocal claims
        claims += 1
        return await claim(url, upstream, capacity)

    board_a.claim = counted  # type: ignore[method-assign]
    await asyncio.sleep(0.3)  # A's sync loop has read the board several times
    with pytest.raises(GatewayError):
        await request(a, "x")
    assert claims == 0, f"claimed {claims} times a place it could see was taken"
    await board_b.abandon(engine_url, "ghost-1@v1.aaaa")
    assert await request(a, "x") == "e0"
    assert claims == 1


async def test_a_pin_dropped_through_another_replica_is_waited_for_not_refused(
    make: Make, adapter_dir: Callable[[str, int], Path], upstreams: list[FakeVLLM]
) -> None:
    """Regression (real two-replica churn test, 503 "no adapter slot is free ... all 4 are in
    use" at once): a replica that saw every slot held by a pinned version refused a cold adapter
    at once, "waiting cannot help". With other replicas its view of the pins is up to a sync
    interval old: an unpin made through another replica frees a slot it has not seen yet. It now
    waits (up to its slot wait) for its view to catch up instead."""
    a = await make("A", engines=1)
    b = await make("B", engines=1, slot_wait_s=3.0)
    for name in ("x", "y", "z"):
        await a.register(name, adapter_dir(name, 1))
    await a.set_pinned("x", True)
    await a.set_pinned("y", True)
    await eventually(
        lambda: (
            b.view("x").record.pinned
            and b.view("y").record.pinned
            and bool(b.view("x").active.engines)
            and bool(b.view("y").active.engines)
            and "z" in b.registered_names()
        )
    )
    sync = b.replicas
    assert sync is not None
    gate = asyncio.Event()
    refresh = sync._refresh_records

    async def held_refresh() -> None:  # B's view of the registry stops here until the gate
        await gate.wait()
        await refresh()

    sync._refresh_records = held_refresh  # type: ignore[method-assign]
    await a.set_pinned("y", False)  # B still sees y pinned
    pending = asyncio.create_task(request(b, "z"))
    await asyncio.sleep(0.3)
    assert not pending.done(), f"refused at once: {pending.exception()!r}"
    gate.set()
    assert await asyncio.wait_for(pending, 5.0) == "e0"
    assert not any(u.violations for u in upstreams)


async def test_a_drain_mark_is_dropped_when_the_place_goes_even_if_never_seen_loaded(
    make: Make, adapter_dir: Callable[[str, int], Path], upstreams: list[FakeVLLM]
) -> None:
    """Regression (real two-replica churn test: ~10 s with no load or unload, then 503 "no
    adapter slot is free"): another replica loaded a version on an engine and drained it again
    between two of this replica's syncs, so this one saw the place only as "draining". It marked
    its own slot of that version blocked there (the place counted as taken, never a victim), and
    when the place went it cleared marks only for engines the slot listed: the mark stayed, and
    the engine looked full for good."""
    a, b = await make("A"), await make("B")
    await a.register("x", adapter_dir("x", 1))
    await request(a, "x")
    (own,) = holders_of(a, "x")
    other = next(e for e in a.engines if e.name != own)
    upstream = a._ctx.records["x"].active.upstream_name
    board_b = b._ctx.board
    assert isinstance(board_b, SharedBoard)
    assert await board_b.claim(other.url, upstream, 2)  # B "loads" x there...
    assert await board_b.release(other.url, upstream)  # ...and drains it: A has seen the mark
    slot = a._ctx.table.get(upstream)
    assert slot is not None and other.name in slot.blocked
    await board_b.removed(other.url, upstream)  # gone
    await eventually(lambda: other.name not in slot.blocked)
    assert a.slots_used_per_engine()[other.name] == 0


def holders_of(lifecycle: AdapterLifecycle, name: str) -> tuple[str, ...]:
    return lifecycle.view(name).active.engines
