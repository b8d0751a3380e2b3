"""The engines' one health-watch loop (``WatchedEngine._watch_health``), over the fake vLLM.

The managed and remote engines are tested through their own modules; here the loop alone, with a
minimal subclass whose hooks only record what the loop decided.
"""

from __future__ import annotations

import asyncio

import httpx

from gateway.engines.base import EngineState, EngineStatus, HealthWatch, WatchedEngine
from gateway.engines.client import EngineClient
from loadtest.fake_vllm import FakeVLLM


class Watched(WatchedEngine):
    def __init__(self, fake: FakeVLLM) -> None:
        super().__init__("watched", "fake-base", 2)
        client = EngineClient(self.url)
        client.http = httpx.AsyncClient(base_url=self.url, transport=fake.transport())
        self._client = client
        self.state = EngineState.STARTING
        self.lost: list[str] = []
        self.gone: str | None = None
        self.became_ready = asyncio.Event()
        self.went_down = asyncio.Event()

    @property
    def url(self) -> str:
        return "http://watched.invalid"

    def status(self) -> EngineStatus:
        return EngineStatus(self.name, self.state, str(self.state), 0, self.url)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        await self.close_client()

    def _exit_cause(self) -> str | None:
        return self.gone

    async def _health_passed(self) -> None:
        self.state = EngineState.READY
        self.went_down.clear()
        self.became_ready.set()

    def _health_lost(self, cause: str) -> None:
        self.state = EngineState.DOWN
        self.lost.append(cause)
        self.became_ready.clear()
        self.went_down.set()


async def until_ready(engine: Watched) -> None:
    await asyncio.wait_for(engine.became_ready.wait(), 5)


async def test_ready_then_down_after_three_failed_checks() -> None:
    fake = FakeVLLM()
    engine = Watched(fake)
    watch = asyncio.create_task(engine._watch_health(HealthWatch(0.01, end_when_down=True)))
    await until_ready(engine)
    fake.unhealthy = True
    assert await asyncio.wait_for(watch, 5) is True
    assert engine.lost == ["unhealthy (3 failed health checks)"]


async def test_a_watch_that_keeps_going_comes_back_to_ready() -> None:
    fake = FakeVLLM()
    engine = Watched(fake)
    watch = asyncio.create_task(engine._watch_health(HealthWatch(0.01)))
    try:
        await until_ready(engine)
        fake.unreachable = True
        await asyncio.wait_for(engine.went_down.wait(), 5)
        fake.unreachable = False
        await until_ready(engine)
        assert engine.lost == ["unhealthy (3 failed health checks)"]
    finally:
        watch.cancel()


async def test_never_healthy_within_the_startup_bound_is_down() -> None:
    fake = FakeVLLM()
    fake.unhealthy = True
    engine = Watched(fake)
    watch = HealthWatch(0.01, startup_timeout_s=0.1, end_when_down=True)
    assert await asyncio.wait_for(engine._watch_health(watch), 5) is False
    assert engine.lost == ["not healthy 0 s after start"]


async def test_an_exit_ends_the_watch_at_once() -> None:
    engine = Watched(FakeVLLM())
    engine.gone = "exited with code 1"
    assert await asyncio.wait_for(engine._watch_health(HealthWatch(0.01)), 5) is False
    assert engine.lost == ["exited with code 1"]
