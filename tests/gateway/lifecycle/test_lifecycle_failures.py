"""gateway.lifecycle.service when loads fail: a refused adapter (4xx) is FAILED, an engine failing
to load it (5xx) is not; neither stays failed for good. Within the cool-down requests get the error
with no engine call; the first request after it loads again, without an operator.

The engine is the FAKE vLLM of loadtest/fake_vllm; the clock is a test clock, so
cool-downs pass without sleeping.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from adapters.registry import Registry
from adapters.state import AdapterState
from gateway.errors import AdapterLoadError, EngineUnavailableError
from gateway.lifecycle.service import AdapterLifecycle
from loadtest.fake_vllm import FakeVLLM
from tests.adapters.builders import lenient_store, write_adapter, write_base_model
from tests.support.fake_engine import FakeEngine

BASE = "tinybase"
REFUSED_RETRY_S = 30.0
ERROR_RETRY_S = 5.0


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Events:
    failed: list[str] = field(default_factory=list)

    def on_load(self, name: str, seconds: float) -> None:
        pass

    def on_unload(self, name: str) -> None:
        pass

    def on_evict(self, name: str) -> None:
        pass

    def on_load_failed(self, name: str) -> None:
        self.failed.append(name)

    def on_delete(self, name: str) -> None:
        pass


@dataclass
class Env:
    upstream: FakeVLLM
    clock: Clock
    events: Events
    tmp: Path
    lifecycles: list[AdapterLifecycle] = field(default_factory=list)

    def adapter(self, name: str) -> Path:
        return write_adapter(self.tmp / "adapters" / name, base_model=BASE, seed=3)

    async def lifecycle(self) -> AdapterLifecycle:
        roots = (self.tmp / "adapters").resolve()
        roots.mkdir(exist_ok=True)
        lifecycle = AdapterLifecycle(
            Registry(f"sqlite:///{self.tmp / 'registry.db'}"),
            [FakeEngine(self.upstream)],
            lenient_store(self.tmp / "store", BASE, roots, write_base_model(self.tmp / BASE)),
            observer=self.events,
            load_retry_s=REFUSED_RETRY_S,
            engine_error_retry_s=ERROR_RETRY_S,
            clock=self.clock,
        )
        await lifecycle.start()
        self.lifecycles.append(lifecycle)
        return lifecycle


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    made = Env(FakeVLLM(), Clock(), Events(), tmp_path)
    yield made
    for lifecycle in made.lifecycles:
        await lifecycle.close()


async def request(lifecycle: AdapterLifecycle, name: str) -> str:
    async with lifecycle.lease(name) as route:
        return route.upstream_model


async def test_refused_adapter_is_failed_then_retried_by_a_request_after_the_cool_down(
    env: Env,
) -> None:
    lifecycle = await env.lifecycle()
    path = env.adapter("a")
    await lifecycle.register("a", path)
    env.upstream.refuse_names.add("a")
    with pytest.raises(AdapterLoadError) as caught:
        await request(lifecycle, "a")
    # The client sees the public name; the engine's words (with the path) are for the log.
    assert caught.value.status == 502 and caught.value.message == (
        "the engine refused to load adapter 'a'"
    )
    assert "No adapter found" in (caught.value.detail or "")
    view = lifecycle.view("a").active
    assert view.state is AdapterState.FAILED and "No adapter found" in (view.last_error or "")
    record = lifecycle.registry.get("a")
    assert record is not None and record.active.state is AdapterState.FAILED
    assert env.events.failed == ["a"]

    # Within the cool-down: the failure at once, no engine call, when to come back.
    env.clock.now += REFUSED_RETRY_S - 1
    with pytest.raises(AdapterLoadError, match="to retry") as caught:
        await request(lifecycle, "a")
    assert caught.value.headers["Retry-After"] == "1"
    assert str(path) not in caught.value.message and "@v" not in caught.value.message
    assert "No adapter found" in (caught.value.detail or "")
    assert env.upstream.count("load") == 1

    # After it, still refused: one more engine call, then a new cool-down.
    env.clock.now += 1
    with pytest.raises(AdapterLoadError):
        await request(lifecycle, "a")
    with pytest.raises(AdapterLoadError):
        await request(lifecycle, "a")
    assert env.upstream.count("load") == 2

    # Fixed on the engine's side (say, a volume remounted): the next request after the
    # cool-down loads it, with no operator involved.
    env.upstream.refuse_names.clear()
    env.clock.now += REFUSED_RETRY_S
    assert (await request(lifecycle, "a")).startswith("a@v1.")
    assert lifecycle.view("a").active.state is AdapterState.LOADED
    record = lifecycle.registry.get("a")
    assert record is not None and record.active.state is AdapterState.LOADED


async def test_admin_load_retries_a_failed_adapter_at_once(env: Env) -> None:
    lifecycle = await env.lifecycle()
    path = env.adapter("a")
    await lifecycle.register("a", path)
    env.upstream.refuse_names.add("a")
    with pytest.raises(AdapterLoadError):
        await request(lifecycle, "a")
    env.upstream.refuse_names.clear()
    view = await lifecycle.load("a")  # no waiting for the cool-down
    assert view.active.state is AdapterState.LOADED
    assert await request(lifecycle, "a")


async def test_engine_500_on_load_is_an_engine_error_not_a_failed_adapter(env: Env) -> None:
    lifecycle = await env.lifecycle()
    await lifecycle.register("a", env.adapter("a"))
    env.upstream.fail_loads_with = "EngineCore is busy"
    with pytest.raises(EngineUnavailableError) as caught:
        await request(lifecycle, "a")
    assert caught.value.status == 503 and "EngineCore is busy" not in caught.value.message
    assert "EngineCore is busy" in (caught.value.detail or "")
    view = lifecycle.view("a").active
    assert view.state is AdapterState.REGISTERED
    assert "EngineCore is busy" in (view.last_error or "")
    record = lifecycle.registry.get("a")
    assert record is not None and record.active.state is AdapterState.REGISTERED
    assert env.events.failed == ["a"]

    # A short cool-down: no load storm from a burst of requests.
    with pytest.raises(EngineUnavailableError) as caught:
        await request(lifecycle, "a")
    assert int(caught.value.headers["Retry-After"]) == ERROR_RETRY_S
    assert env.upstream.count("load") == 1

    env.upstream.fail_loads_with = None
    env.clock.now += ERROR_RETRY_S
    assert await request(lifecycle, "a")
    assert lifecycle.view("a").active.state is AdapterState.LOADED
    assert lifecycle.view("a").active.last_error is None


async def test_unreachable_engine_has_no_cool_down(env: Env) -> None:
    lifecycle = await env.lifecycle()
    await lifecycle.register("a", env.adapter("a"))
    env.upstream.unreachable = True
    with pytest.raises(EngineUnavailableError):
        await request(lifecycle, "a")
    env.upstream.unreachable = False
    assert await request(lifecycle, "a")  # at once: the engine's supervision guards outages
    assert env.events.failed == []


async def test_failed_before_a_restart_is_retried_on_first_use(env: Env) -> None:
    first = await env.lifecycle()
    path = env.adapter("a")
    await first.register("a", path)
    env.upstream.refuse_names.add("a")
    with pytest.raises(AdapterLoadError):
        await request(first, "a")
    await first.close()
    env.lifecycles.remove(first)

    env.upstream.refuse_names.clear()
    second = await env.lifecycle()
    assert second.view("a").active.state is AdapterState.FAILED  # as recorded
    assert await request(second, "a")  # no cool-down left from the previous run
    assert second.view("a").active.state is AdapterState.LOADED
