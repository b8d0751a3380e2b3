"""The files validated are the files served: after registration, swapping the adapter's source
directory (a symlink outside the allowed roots, pickle-only weights, other weights) changes
nothing the engine is given, on first use, after an eviction and after an engine restart; a
directory overwritten in place (``lora-trainer train --overwrite``) keeps its old versions.

The engine is the FAKE vLLM of loadtest/fake_vllm; it records the path each adapter
was loaded from, and these tests read the files at that path as the engine would.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from adapters.contract import ADAPTER_WEIGHTS, PICKLE_WEIGHTS
from adapters.layout import sha256_file
from adapters.registry import Registry
from adapters.store import AdapterStore
from gateway.lifecycle.service import AdapterLifecycle
from loadtest.fake_vllm import FakeVLLM
from tests.adapters.builders import lenient_validator, write_adapter, write_base_model
from tests.support.fake_engine import FakeEngine

BASE = "tinybase"


Setup = tuple[AdapterLifecycle, FakeEngine, Path]


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Callable[[int], Awaitable[Setup]]]:
    made: list[AdapterLifecycle] = []

    async def factory(capacity: int) -> Setup:
        roots = (tmp_path / "adapters").resolve()
        roots.mkdir()
        base_dir = write_base_model(tmp_path / BASE)
        validator = lenient_validator(BASE, roots, base_dir)
        engine = FakeEngine(FakeVLLM(), lora_capacity=capacity)
        lifecycle = AdapterLifecycle(
            Registry(f"sqlite:///{tmp_path / 'registry.db'}"),
            [engine],
            AdapterStore(tmp_path / "data" / "store", validator),
            capacity=capacity,
        )
        await lifecycle.start()
        made.append(lifecycle)
        return lifecycle, engine, roots

    yield factory
    for lifecycle in made:
        await lifecycle.close()


@pytest.fixture
async def setup(make: Callable[[int], Awaitable[Setup]]) -> Setup:
    return await make(1)


async def use(lifecycle: AdapterLifecycle, name: str) -> None:
    async with lifecycle.lease(name) as route:
        assert isinstance(route.engine, FakeEngine)
        route.engine.upstream.serve(route.upstream_model)


def assert_engine_has_validated_files(lifecycle: AdapterLifecycle, engine: FakeEngine) -> None:
    """Every adapter on the engine was loaded from a real directory holding the weights whose
    sha256 the registry recorded at validation, and outside the (swappable) source."""
    assert engine.upstream.loaded
    for upstream_name, lora_path in engine.upstream.loaded.items():
        name = upstream_name.split("@")[0]
        record = lifecycle.registry.get(name)
        assert record is not None
        version = next(v for v in record.versions if v.upstream_name == upstream_name)
        path = Path(lora_path)
        assert not path.is_symlink()
        assert not path.is_relative_to(Path(version.source_path))
        assert sha256_file(path / ADAPTER_WEIGHTS) == version.sha256


def swap_for_symlink_outside(source: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside" / source.name
    write_adapter(outside, base_model=BASE, seed=404)
    shutil.rmtree(source)
    source.symlink_to(outside, target_is_directory=True)


def swap_for_pickle(source: Path, _tmp_path: Path) -> None:
    weights = source / ADAPTER_WEIGHTS
    weights.rename(source / PICKLE_WEIGHTS)


def swap_weights(source: Path, _tmp_path: Path) -> None:
    write_adapter(source, base_model=BASE, seed=99)


@pytest.mark.parametrize("swap", [swap_for_symlink_outside, swap_for_pickle, swap_weights])
async def test_swapped_source_is_never_served(setup: Setup, tmp_path: Path, swap: object) -> None:
    lifecycle, engine, roots = setup
    source = write_adapter(roots / "a", base_model=BASE, seed=1)
    await lifecycle.register("a", source)
    await lifecycle.register("other", write_adapter(roots / "other", base_model=BASE, seed=2))
    assert callable(swap)
    swap(source, tmp_path)

    await use(lifecycle, "a")  # first use
    assert_engine_has_validated_files(lifecycle, engine)
    await use(lifecycle, "other")  # capacity 1: "a" is evicted ...
    await use(lifecycle, "a")  # ... and loaded again
    assert_engine_has_validated_files(lifecycle, engine)
    engine.crash()
    await engine.come_back()  # the restart re-applies "a"
    await use(lifecycle, "a")
    assert_engine_has_validated_files(lifecycle, engine)
    assert engine.upstream.violations == []


async def test_overwrite_in_place_then_restore_serves_the_old_weights(
    make: Callable[[int], Awaitable[Setup]],
) -> None:
    """``lora-trainer train --overwrite`` rewrites the directory; v1 stays restorable."""
    lifecycle, engine, roots = await make(2)
    source = write_adapter(roots / "legal", base_model=BASE, seed=1)
    await lifecycle.register("legal", source, load=True)
    v1 = lifecycle.view("legal").active.version
    write_adapter(source, base_model=BASE, seed=2)  # retrained in place
    await lifecycle.register("legal", source, new_version=True)
    await use(lifecycle, "legal")  # v2 serves
    assert lifecycle.view("legal").record.active_version == 2

    restored = await lifecycle.restore("legal", 1)
    assert restored.record.active_version == 1
    await use(lifecycle, "legal")
    assert_engine_has_validated_files(lifecycle, engine)
    assert v1.upstream_name in engine.upstream.loaded
    assert (
        sha256_file(Path(engine.upstream.loaded[v1.upstream_name]) / ADAPTER_WEIGHTS) == v1.sha256
    )


def stored(copy: Path) -> bool:
    return copy.is_dir()


async def test_delete_keeps_a_copy_another_adapter_still_uses(
    make: Callable[[int], Awaitable[Setup]],
) -> None:
    lifecycle, engine, roots = await make(2)
    lifecycle.store.collect_grace_s = 0
    same = write_adapter(roots / "same", base_model=BASE, seed=1)
    await lifecycle.register("first", same)
    await lifecycle.register("second", same)
    await lifecycle.register("third", write_adapter(roots / "third", base_model=BASE, seed=2))
    shared = Path(lifecycle.view("second").active.version.load_path)
    third = Path(lifecycle.view("third").active.version.load_path)
    assert Path(lifecycle.view("first").active.version.load_path) == shared != third

    await lifecycle.delete("first")
    assert stored(shared)
    await use(lifecycle, "second")
    assert_engine_has_validated_files(lifecycle, engine)
    await lifecycle.delete("third")
    assert not stored(third) and stored(shared)
