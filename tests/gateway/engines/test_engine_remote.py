"""RemoteVLLMEngine state machine, fast, against a FAKE upstream (fault injection only): a tiny
asyncio HTTP server answering ``/health`` and ``/v1/models`` that a test can make unhealthy.
The real-vLLM case is tests/integration/test_remote_engine.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.engines.base import Engine, EngineState
from gateway.engines.factory import build_engines
from gateway.engines.managed import ManagedVLLMEngine
from gateway.engines.process_group import free_loopback_port
from gateway.engines.remote import RemoteVLLMEngine
from gateway.errors import InvalidRequestError
from gateway.settings import GatewaySettings


class FakeUpstream:
    """Stand-in for a vLLM server, for fault injection: health can be switched off."""

    def __init__(self) -> None:
        self.healthy = True
        self.models: list[dict[str, object]] = [
            {"id": "served-base", "parent": None},
            {"id": "some-adapter", "parent": "served-base"},
        ]
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request_line = (await reader.readline()).decode()
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        path = request_line.split(" ")[1] if " " in request_line else "/"
        if path == "/health":
            status, body = (200, b"") if self.healthy else (503, b"unhealthy")
        elif path == "/v1/models":
            status, body = 200, json.dumps({"object": "list", "data": self.models}).encode()
        else:
            status, body = 404, b"{}"
        writer.write(
            f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n"
            f"Content-Type: application/json\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    fake = FakeUpstream()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()


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
    tmp_path: Path, upstream: FakeUpstream
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

        upstream.healthy = False
        await _wait_for(engine, EngineState.DOWN)
        assert "unhealthy" in engine.status().reason
        assert not engine.ready

        upstream.healthy = True
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
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    upstream.models = []
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
