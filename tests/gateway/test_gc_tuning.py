"""The serving process's GC settings: start-up objects frozen, fewer young collections."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.commands.serve import _tune_gc_once_started
from gateway.gc_tuning import SERVING_THRESHOLDS, tune_for_serving


@pytest.fixture
def restore_gc() -> Iterator[None]:
    before = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def _full_collection_visits() -> int:
    """How many objects a full collection examined (collected + still tracked in gen 2)."""
    gc.collect()
    return len(gc.get_objects(generation=2))


def test_start_up_objects_leave_the_full_collections(restore_gc: None) -> None:
    start_up = [[i] for i in range(20_000)]  # containers that live as long as the process
    before = _full_collection_visits()
    tune_for_serving()
    assert gc.get_threshold() == SERVING_THRESHOLDS
    assert gc.get_freeze_count() >= len(start_up)
    # What a full collection walks now is what was made after start-up, not the whole heap.
    assert _full_collection_visits() < before - len(start_up)
    assert start_up[-1] == [19_999]


async def test_serve_tunes_the_gc_only_once_uvicorn_has_started(restore_gc: None) -> None:
    server: Any = SimpleNamespace(started=False)
    task = asyncio.create_task(_tune_gc_once_started(server))
    await asyncio.sleep(0.12)
    assert gc.get_freeze_count() == 0 and not task.done()
    server.started = True
    await asyncio.wait_for(task, timeout=2)
    assert gc.get_freeze_count() > 0 and gc.get_threshold() == SERVING_THRESHOLDS
