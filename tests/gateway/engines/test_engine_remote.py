"""RemoteVLLMEngine state machine, fast, against a FAKE upstream (fault injection only): a tiny
asyncio HTTP server answering ``/health`` and ``/v1/models`` that a test can make unhealthy.
The real-vLLM case is tests/integration/test_remote_engine.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.engines.base import Engine, EngineState
from gateway.engines.factory import build_engines
from gateway.engines.managed import ManagedVLLMEngine
from gateway.engines.process_group import free_loopback_port
from gateway.engines.remote import RemoteVLLMEngine
from gateway.errors import InvalidRequestError
from gateway.settings import GatewaySettings
from loadtest.fake_vllm import FakeBehaviour, FakeVLLM, Recorded, Reply, json_reply, serving


@dataclass
class Upstream:
    fake: FakeVLLM
    url: str


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    """The fake vLLM serving ``served-base`` with one adapter loaded, on a socket."""
    fake = FakeVLLM(FakeBehaviour(model="served-base"))
    fake.loaded["some-adapter"] = "/adapters/some-adapter"
    async with serving(fake) as url:
        yield Upstream(fake, url)


def _settings(tmp_path: Path, urls: list[str]) -> GatewaySettings:
    return GatewaySettings(
        data_dir=tmp_path,
        engine_urls=urls,
        engine_health_interval_s=0.05,
        base_model="configured-name",
    )


async def _wait_for(engine: Engine, state: EngineState, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while engine.status().state is not state:
        assert time.monotonic() < deadline, f"no {state} within {timeout_s} s: {engine.status()}"
        await asyncio.sleep(0.01)


async def test_ready_reads_base_model_and_recovers_after_an_outage(
    tmp_path: Path, upstream: Upstream
) -> None:
    [engine] = build_engines(_settings(tmp_path, [upstream.url + "/"]))
    assert isinstance(engine, RemoteVLLMEngine)
    assert engine.url == upstream.url and engine.base_model == "configured-name"
    calls: list[str] = []

    async def on_ready(ready_engine: Engine) -> None:
        calls.append(ready_engine.base_model)

    engine.add_ready_listener(on_ready)
    await engine.start()
    try:
        await engine.wait_ready(5)
        assert engine.base_model == "served-base"
        assert calls == ["served-base"]

        upstream.fake.unhealthy = True
        await _wait_for(engine, EngineState.DOWN)
        assert "unhealthy" in engine.status().reason
        assert not engine.ready

        upstream.fake.unhealthy = False
        await engine.wait_ready(5)
        assert calls == ["served-base", "served-base"]  # listeners re-apply state after outages
    finally:
        await engine.stop()
    assert engine.status().state is EngineState.STOPPED


async def test_unreachable_engine_stays_starting_with_a_reason(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_loopback_port()}"
    [engine] = build_engines(_settings(tmp_path, [url]))
    await engine.start()
    try:
        deadline = time.monotonic() + 5
        while "failed health checks" not in engine.status().reason:
            assert time.monotonic() < deadline, engine.status()
            await asyncio.sleep(0.01)
        status = engine.status()
        assert status.state is EngineState.STARTING and status.url == url
        # The reason reaches /readyz and 503 messages: no internal address in it.
        assert url.removeprefix("http://") not in status.reason
        with pytest.raises(TimeoutError):
            await engine.wait_ready(0.2)
    finally:
        await engine.stop()


async def test_healthy_engine_without_base_model_is_not_ready(
    tmp_path: Path, upstream: Upstream
) -> None:
    async def no_models(request: Recorded) -> Reply | None:
        return json_reply({"object": "list", "data": []}) if request.path == "/v1/models" else None

    upstream.fake.handler = no_models
    [engine] = build_engines(_settings(tmp_path, [upstream.url]))
    await engine.start()
    try:
        deadline = time.monotonic() + 5
        while "lists no base model" not in engine.status().reason:
            assert time.monotonic() < deadline, engine.status()
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        assert engine.status().state is EngineState.STARTING
    finally:
        await engine.stop()


@pytest.mark.parametrize("url", ["localhost:8000", "ftp://host/x", "http://", "not a url"])
def test_invalid_engine_url_is_rejected(tmp_path: Path, url: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        build_engines(_settings(tmp_path, [url]))
    assert info.value.param == "engine_url"


def test_factory_builds_one_managed_engine_without_urls(tmp_path: Path) -> None:
    model_dir = tmp_path / "my-model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    settings = GatewaySettings(data_dir=tmp_path, base_model=str(model_dir))
    [engine] = build_engines(settings)
    assert isinstance(engine, ManagedVLLMEngine)
    assert engine.base_model == "my-model"
    assert engine.lora_capacity == settings.cpu_lora_capacity
    assert engine.status().state is EngineState.STOPPED
