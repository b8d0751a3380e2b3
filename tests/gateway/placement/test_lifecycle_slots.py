"""gateway.placement.slots: LRU victim choice, engine restart counts, waiting for a free slot."""

from __future__ import annotations

import asyncio

import pytest

from adapters.state import AdapterState, InvalidTransitionError
from gateway.placement.slots import Slot, SlotTable
from loadtest.fake_vllm import FakeVLLM
from tests.support.fake_engine import FakeEngine


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def loaded(table: SlotTable, name: str, engine: FakeEngine, *, version: int = 1) -> Slot:
    slot = table.open(name, version, f"{name}@v{version}", f"/a/{name}")
    slot.engines[engine.name] = engine.restarts
    slot.transition(AdapterState.LOADED)
    return slot


def never(_: object) -> bool:
    return False


def test_victim_is_least_recently_used_and_never_pinned_leased_or_locked() -> None:
    engine = FakeEngine(FakeVLLM())
    table = SlotTable([engine], capacity=4, clock=Clock())
    a, b, c, d = (loaded(table, n, engine) for n in "abcd")
    assert table.full
    table.take(a)
    table.release(a)  # a is now the most recently used
    assert table.pick_victim("x", never, never) is b
    assert table.pick_victim("x", lambda s: s is b, never) is c
    table.take(c)
    assert table.pick_victim("x", lambda s: s is b, never) is d
    assert table.pick_victim("x", lambda s: s is b, lambda name: name == "d") is a
    assert table.pick_victim("x", lambda s: s is not c, never) is None
    # The caller's own name is locked by the caller: only its retiring versions may go.
    assert table.pick_victim("b", lambda s: s is not b, never) is None
    b.retiring = True
    assert table.pick_victim("b", never, never) is b  # retiring versions go first
    table.release(c)


def test_current_engines_follow_restarts() -> None:
    engine = FakeEngine(FakeVLLM())
    table = SlotTable([engine], capacity=2, clock=Clock())
    slot = loaded(table, "a", engine)
    assert table.current_engines(slot) == ["fake"] and table.pick_engine(slot) is engine
    assert table.loaded_per_engine() == {"fake": 1}
    engine.crash()
    assert table.current_engines(slot) == [] and table.pick_engine(slot) is None
    engine.state = engine.state.READY
    assert table.current_engines(slot) == []  # ready again, but it forgot the adapter
    assert table.forget_engine("fake") == [slot]
    assert slot.engines == {}


async def test_wait_freed_wakes_on_release_and_times_out() -> None:
    engine = FakeEngine(FakeVLLM())
    table = SlotTable([engine], capacity=1, clock=Clock())
    slot = loaded(table, "a", engine)
    table.take(slot)
    assert not slot.drained.is_set()
    assert await table.wait_freed(0.01) is False
    waiter = asyncio.create_task(table.wait_freed(5))
    await asyncio.sleep(0)
    table.release(slot)
    assert await waiter is True and slot.drained.is_set()
    table.remove(slot)
    assert len(table) == 0 and not table.holds(slot)


def test_slot_transitions_are_checked() -> None:
    table = SlotTable([FakeEngine(FakeVLLM())], capacity=1, clock=Clock())
    slot = table.open("a", 1, "a@v1", "/a")
    assert slot.state is AdapterState.LOADING
    with pytest.raises(InvalidTransitionError):
        slot.transition(AdapterState.UNLOADING)
    with pytest.raises(ValueError, match="at least 1"):
        SlotTable([], capacity=0, clock=Clock())
