"""gateway.placement.policy on hand-built snapshots: routing, cold loads, evictions, replicas."""

from __future__ import annotations

import pytest

from gateway.placement.policy import (
    EngineView,
    LoadPlan,
    PlacementPolicy,
    Snapshot,
    Victim,
    adapter_capacity,
    choose_base_engine,
    choose_load,
    choose_replica,
    choose_route,
    replicate_targets,
)


def engine(
    name: str,
    *,
    capacity: int = 2,
    in_flight: int = 0,
    resident: tuple[str, ...] = (),
    ready: bool = True,
    victims: tuple[Victim, ...] = (),
    adapter_in_flight: dict[str, int] | None = None,
) -> EngineView:
    return EngineView(
        name,
        ready,
        capacity,
        in_flight,
        frozenset(resident),
        adapter_in_flight or {},
        victims,
    )


def test_capacity_is_the_sum_under_affinity_and_the_smallest_under_replicate() -> None:
    assert adapter_capacity(PlacementPolicy.AFFINITY, [2, 3]) == 5
    assert adapter_capacity(PlacementPolicy.REPLICATE, [2, 3]) == 2
    with pytest.raises(ValueError, match="no engine"):
        adapter_capacity(PlacementPolicy.AFFINITY, [])


def test_base_requests_go_to_the_least_loaded_ready_engine() -> None:
    snap = Snapshot(
        (
            engine("e0", in_flight=3),
            engine("e1", in_flight=1),
            engine("e2", in_flight=0, ready=False),
        )
    )
    assert choose_base_engine(snap) == "e1"
    assert choose_base_engine(snap, exclude={"e1"}) == "e0"
    assert choose_base_engine(snap, exclude={"e0", "e1"}) is None


def test_route_goes_to_the_least_loaded_engine_holding_the_adapter() -> None:
    snap = Snapshot(
        (
            engine("e0", in_flight=5, resident=("a",)),
            engine("e1", in_flight=2, resident=("a", "b")),
            engine("e2", in_flight=0, resident=("b",)),
            engine("e3", in_flight=0, resident=("a",), ready=False),
        )
    )
    assert choose_route(snap, "a") == "e1"
    assert choose_route(snap, "a", exclude={"e1"}) == "e0"
    assert choose_route(snap, "b") == "e2"
    assert choose_route(snap, "c") is None  # a miss


def test_cold_adapter_loads_on_the_least_loaded_engine_with_a_free_slot() -> None:
    snap = Snapshot(
        (
            engine("e0", in_flight=0, resident=("a", "b")),  # full, though idle
            engine("e1", in_flight=4, resident=("c",)),
            engine("e2", in_flight=2, resident=()),
            engine("e3", in_flight=0, ready=False),
        )
    )
    assert choose_load(snap, "x") == LoadPlan("e2")
    assert choose_load(snap, "x", exclude={"e2"}) == LoadPlan("e1")
    # Never onto an engine that already holds it.
    assert choose_load(snap, "c") == LoadPlan("e2")


def test_when_all_are_full_it_evicts_the_stalest_victim_of_the_least_loaded_engine() -> None:
    snap = Snapshot(
        (
            engine(
                "e0",
                in_flight=3,
                resident=("a", "b"),
                victims=(Victim("a", 1.0), Victim("b", 2.0)),
            ),
            engine(
                "e1",
                in_flight=1,
                resident=("c", "d"),
                victims=(Victim("c", 9.0), Victim("d", 5.0)),
            ),
            engine("e2", in_flight=0, resident=("e", "f")),  # nothing evictable
        )
    )
    assert choose_load(snap, "x") == LoadPlan("e1", evict="d")
    assert choose_load(snap, "x", exclude={"e1"}) == LoadPlan("e0", evict="a")
    assert choose_load(snap, "x", exclude={"e0", "e1"}) is None


def test_a_free_slot_beats_an_eviction_even_on_a_busier_engine() -> None:
    snap = Snapshot(
        (
            engine("e0", in_flight=0, resident=("a", "b"), victims=(Victim("a", 1.0),)),
            engine("e1", in_flight=7, resident=("c",)),
        )
    )
    assert choose_load(snap, "x") == LoadPlan("e1")


def test_a_hot_adapter_is_copied_onto_a_second_engine_past_the_threshold() -> None:
    def snap(a_in_flight: int, *, e1_free: bool = True) -> Snapshot:
        return Snapshot(
            (
                engine(
                    "e0",
                    in_flight=a_in_flight,
                    resident=("a",),
                    adapter_in_flight={"a": a_in_flight},
                ),
                engine(
                    "e1",
                    resident=("b",) if e1_free else ("b", "c"),
                    victims=() if e1_free else (Victim("c", 3.0),),
                ),
            )
        )

    assert choose_replica(snap(3), "a", threshold=4) is None
    assert choose_replica(snap(4), "a", threshold=4) == LoadPlan("e1")
    assert choose_replica(snap(4, e1_free=False), "a", threshold=4) == LoadPlan("e1", evict="c")
    assert choose_replica(snap(4), "zzz", threshold=4) is None  # not resident: not a replica
    # Already on both engines, one of them below the threshold: nothing to do.
    both = Snapshot(
        (
            engine("e0", resident=("a",), adapter_in_flight={"a": 9}),
            engine("e1", resident=("a",), adapter_in_flight={"a": 1}),
        )
    )
    assert choose_replica(both, "a", threshold=4) is None


def test_replicate_targets_are_the_ready_engines_missing_it() -> None:
    snap = Snapshot((engine("e0", resident=("a",)), engine("e1"), engine("e2", ready=False)))
    assert replicate_targets(snap, "a") == ["e1"]


def test_equally_loaded_engines_fill_evenly() -> None:
    snap = Snapshot((engine("e0", resident=("a",)), engine("e1")))
    assert choose_load(snap, "x") == LoadPlan("e1")
