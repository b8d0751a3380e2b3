"""The engine is not an open door, fast: the guard that runs inside the managed vLLM, the key the
engine client sends on every call, a new key per managed start (in the environment, not argv),
and the configured key of a remote engine. The real vLLM case is
tests/integration/test_vllm_engine_key.py.

The upstream here is a small Starlette app with vLLM's paths, wrapped in the REAL
:class:`~gateway.engines.engine_guard.EngineKeyGuard`; it records the Authorization header of
every request that reaches it.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from gateway.engines.base import EngineState
from gateway.engines.client import ENGINE_KEY_REFUSED, EngineClient
from gateway.engines.engine_guard import KEY_ENV, EngineKeyGuard
from gateway.engines.managed import GUARD_MIDDLEWARE
from gateway.engines.remote import RemoteVLLMEngine
from gateway.errors import UpstreamHTTPError
from gateway.settings import GatewaySettings
from tests.gateway.engines.test_engine_managed import FakeVLLMEngine, _settings, _wait_for
from tests.support.gateway_server import serve_in_loop

KEY = "engine-key-0123456789"


@pytest.fixture
def health_root(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    root.mkdir()
    (root / "health").write_text("ok")
    return root


class GuardedUpstream:
    """vLLM's paths (data plane, LoRA control plane, probes, the unguarded extras of 0.32)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str | None]] = []

    def app(self, key: str | None) -> EngineKeyGuard:
        async def answer(request: Request) -> Response:
            self.seen.append((request.url.path, request.headers.get("authorization")))
            if request.url.path == "/v1/models":
                return JSONResponse({"data": [{"id": "served-base", "parent": None}]})
            if request.url.path in ("/v1/chat/completions", "/invocations"):
                return JSONResponse({"choices": []})
            return PlainTextResponse("ok")

        routes = [Route(path, answer, methods=["GET"]) for path in ("/health", "/metrics")]
        routes += [Route("/v1/models", answer, methods=["GET"])]
        routes += [
            Route(path, answer, methods=["POST"])
            for path in (
                "/v1/chat/completions",
                "/v1/load_lora_adapter",
                "/v1/unload_lora_adapter",
                "/invocations",
                "/tokenize",
                "/pause",
            )
        ]
        return EngineKeyGuard(Starlette(routes=routes), key=key)


@pytest_asyncio.fixture
async def upstream() -> AsyncIterator[tuple[GuardedUpstream, str]]:
    fake = GuardedUpstream()
    async with serve_in_loop(fake.app(KEY)) as url:
        yield fake, url


async def test_guard_refuses_every_path_but_the_probes_without_the_key(
    upstream: tuple[GuardedUpstream, str],
) -> None:
    fake, url = upstream
    async with httpx.AsyncClient(base_url=url) as http:
        for path in ("/health", "/metrics"):
            assert (await http.get(path)).status_code == 200
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": f"Basic {KEY}"}):
            for path in ("/invocations", "/tokenize", "/pause", "/v1/load_lora_adapter"):
                response = await http.post(path, json={}, headers=headers)
                assert response.status_code == 401, (path, headers)
                assert response.json()["error"]["type"] == "authentication_error"
                assert KEY not in response.text
            assert (await http.get("/v1/models", headers=headers)).status_code == 401
        assert (await http.post("/invocations", json={}, headers={"authorization": ""})).is_error
        ok = await http.post("/invocations", json={}, headers={"authorization": f"Bearer {KEY}"})
        assert ok.status_code == 200
    assert [path for path, _ in fake.seen] == ["/health", "/metrics", "/invocations"]


def test_guard_without_a_key_lets_everything_through(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    guard = EngineKeyGuard(Starlette())
    assert guard.allows("POST", "/invocations", None)
    monkeypatch.setenv(KEY_ENV, KEY)
    guard = EngineKeyGuard(Starlette())
    assert not guard.allows("POST", "/invocations", None)
    assert not guard.allows("POST", "/health", None)  # open probes are GET/HEAD only
    assert guard.allows("POST", "/invocations", f"bearer {KEY}")


async def test_client_sends_the_key_on_data_and_control_plane(
    upstream: tuple[GuardedUpstream, str],
) -> None:
    fake, url = upstream
    client = EngineClient(url, api_key=KEY)
    try:
        assert await client.health()
        assert await client.list_models()
        assert await client.metrics_text() == "ok"
        await client.load_lora("a1", "/adapters/a1")
        await client.unload_lora("a1")
        async with client.openai_session().post(
            f"{client.base_url}/v1/chat/completions", json={"model": "m"}
        ) as response:
            assert response.status == 200
    finally:
        await client.aclose()
    assert len(fake.seen) == 6
    assert {header for _, header in fake.seen} == {f"Bearer {KEY}"}


async def test_client_without_the_key_is_refused_by_a_guarded_engine(
    upstream: tuple[GuardedUpstream, str],
) -> None:
    _, url = upstream
    client = EngineClient(url)
    try:
        assert await client.health()  # the probe stays open
        with pytest.raises(UpstreamHTTPError) as caught:
            await client.list_models()
        assert caught.value.status == 502
        assert caught.value.code == ENGINE_KEY_REFUSED
        assert "engine key" in caught.value.message
    finally:
        await client.aclose()


async def test_remote_engine_sends_the_configured_key(
    tmp_path: Path, upstream: tuple[GuardedUpstream, str]
) -> None:
    fake, url = upstream
    settings = GatewaySettings(
        data_dir=tmp_path, engine_urls=[url], engine_api_key=KEY, engine_health_interval_s=0.1
    )
    engine = RemoteVLLMEngine(settings, url)
    await engine.start()
    try:
        await engine.wait_ready(10)
        assert engine.base_model == "served-base"
    finally:
        await engine.stop()
    assert ("/v1/models", f"Bearer {KEY}") in fake.seen


async def test_remote_engine_without_the_key_is_not_ready(
    tmp_path: Path, upstream: tuple[GuardedUpstream, str]
) -> None:
    _, url = upstream
    settings = GatewaySettings(data_dir=tmp_path, engine_urls=[url], engine_health_interval_s=0.1)
    engine = RemoteVLLMEngine(settings, url)
    await engine.start()
    try:
        with pytest.raises(TimeoutError, match="engine key"):
            await engine.wait_ready(1.5)
    finally:
        await engine.stop()


@pytest.mark.parametrize("value", [" ", "two words", "k" * 1001])
def test_unusable_engine_key_is_refused(tmp_path: Path, value: str) -> None:
    with pytest.raises(ValueError, match="engine key"):
        GatewaySettings(data_dir=tmp_path, engine_api_key=value)


def test_empty_engine_key_from_the_environment_means_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LORA_GATEWAY_ENGINE_API_KEY", "")
    assert GatewaySettings(data_dir=tmp_path).engine_api_key is None
    monkeypatch.setenv("LORA_GATEWAY_ENGINE_API_KEY", KEY)
    key = GatewaySettings(data_dir=tmp_path).engine_api_key
    assert key is not None and key.get_secret_value() == KEY


def test_managed_command_loads_the_guard_and_never_carries_the_key(tmp_path: Path) -> None:
    from gateway.engines.basemodels import BaseModelSpec
    from gateway.engines.managed import ManagedVLLMEngine

    engine = ManagedVLLMEngine(_settings(tmp_path), model=BaseModelSpec(tmp_path, "m"))
    command = engine.command()
    i = command.index("--middleware")
    module, _, name = command[i + 1].rpartition(".")
    assert getattr(importlib.import_module(module), name) is EngineKeyGuard
    assert command[i + 1] == GUARD_MIDDLEWARE
    assert "--api-key" not in command


async def test_each_managed_start_gets_a_new_key_in_its_environment(
    tmp_path: Path, health_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "inherited-key-must-not-reach-the-child")
    keys = tmp_path / "keys.txt"
    argv = tmp_path / "argv.txt"
    server = f"{sys.executable} -m http.server {{port}} --bind 127.0.0.1 --directory {health_root}"
    script = (
        f'echo "${KEY_ENV}" >> {keys}; cat /proc/$$/cmdline >> {argv}; sleep 300 & exec {server}'
    )
    engine = FakeVLLMEngine(_settings(tmp_path), health_root, script=script)
    engine.script = script.replace("{port}", str(engine.port))
    await engine.start()
    try:
        await _wait_for(engine, EngineState.READY)
        first = engine.api_key
        assert first and keys.read_text().split() == [first]
        assert engine.client._auth_headers == {"Authorization": f"Bearer {first}"}
        engine.kill_process()
        deadline = time.monotonic() + 20
        while engine.api_key == first or engine.status().state is not EngineState.READY:
            assert time.monotonic() < deadline, engine.status()
            await asyncio.sleep(0.02)
        second = engine.api_key
        assert second and second != first
        assert keys.read_text().split() == [first, second]
        assert engine.client._auth_headers == {"Authorization": f"Bearer {second}"}
        assert len(second) >= 40
    finally:
        await engine.stop()
    assert first not in argv.read_text() and second not in argv.read_text()


async def test_a_managed_engine_given_a_key_keeps_it_across_restarts(
    tmp_path: Path, health_root: Path
) -> None:
    """``serve --workers``: the parent's engines are reached by the workers with one key."""
    keys = tmp_path / "keys.txt"
    server = f"{sys.executable} -m http.server {{port}} --bind 127.0.0.1 --directory {health_root}"
    script = f'echo "${KEY_ENV}" >> {keys}; sleep 300 & exec {server}'
    fixed = "fixed-engine-key-" + "k" * 40
    engine = FakeVLLMEngine(_settings(tmp_path), health_root, script=script, api_key=fixed)
    engine.script = script.replace("{port}", str(engine.port))
    await engine.start()
    try:
        await _wait_for(engine, EngineState.READY)
        engine.kill_process()
        deadline = time.monotonic() + 20
        while engine.restarts == 0 or engine.status().state is not EngineState.READY:
            assert time.monotonic() < deadline, engine.status()
            await asyncio.sleep(0.02)
        assert keys.read_text().split() == [fixed, fixed]
        assert engine.api_key == fixed
        assert engine.client._auth_headers == {"Authorization": f"Bearer {fixed}"}
    finally:
        await engine.stop()
