"""create_app: who owns the engines, the router's choices, and what the gateway imports."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import httpx
import pytest

from gateway.app import create_app
from gateway.engines.base import EngineState
from gateway.errors import EngineUnavailableError, ModelNotFoundError
from gateway.inference.routing import PublicModel, Route, Router, unknown_model
from gateway.settings import GatewaySettings
from loadtest.fake_vllm import FakeBehaviour, FakeVLLM, serving
from tests.gateway.openai_env import BASE, chat
from tests.support.gateway_server import StaticEngine, serve_in_loop, unused_url


class NoAdapters:
    """The router's adapter side, empty: these tests exercise base-model routing only."""

    def lease(self, name: str, *, engine: str | None = None) -> AbstractAsyncContextManager[Route]:
        raise unknown_model(name)

    def public_models(self) -> list[PublicModel]:
        return []


class CountingEngine(StaticEngine):
    def __init__(self, url: str) -> None:
        super().__init__(url, BASE)
        self.calls: list[str] = []

    async def start(self) -> None:
        self.calls.append("start")

    async def stop(self) -> None:
        self.calls.append("stop")


async def test_engines_built_from_settings_are_started_and_stopped(tmp_path: Path) -> None:
    async with serving(FakeVLLM(FakeBehaviour(model="served-base"))) as upstream:
        settings = GatewaySettings(
            data_dir=tmp_path, engine_urls=[upstream], engine_health_interval_s=0.2
        )
        app = create_app(settings)
        async with serve_in_loop(app) as url, httpx.AsyncClient(base_url=url) as http:
            for _ in range(100):
                if (await http.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.05)
            models = (await http.get("/v1/models")).json()["data"]
            assert [m["id"] for m in models] == ["served-base"]
            answer = await http.post("/v1/chat/completions", json=chat("served-base"))
            assert answer.status_code == 200
            engine = app.state.services.engines[0]
            assert app.state.services.owns_engines
        assert engine.status().state is EngineState.STOPPED


async def test_engines_passed_in_belong_to_the_caller(tmp_path: Path) -> None:
    engine = CountingEngine(unused_url())
    app = create_app(GatewaySettings(data_dir=tmp_path), engines=[engine])
    async with serve_in_loop(app) as url, httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/healthz")).status_code == 200
        assert app.state.services.owns_engines is False
    assert engine.calls == []


async def test_router_spreads_base_traffic_over_ready_engines() -> None:
    engines = [StaticEngine(unused_url(), BASE, name=f"e{i}") for i in range(3)]
    engines[1].state = EngineState.DOWN
    router = Router(engines, NoAdapters())
    picked = []
    for _ in range(4):
        async with router.route(BASE) as route:
            assert route.adapter is None and route.upstream_model == BASE
            picked.append(route.engine.name)
    assert sorted(set(picked)) == ["e0", "e2"] and picked[0] != picked[1]
    for engine in engines:
        engine.state = EngineState.STARTING
    with pytest.raises(EngineUnavailableError):
        async with router.route(BASE):
            pass
    with pytest.raises(ModelNotFoundError):
        async with router.route("some-adapter"):
            pass
    assert [m.id for m in router.public_models()] == [BASE]


def test_router_refuses_engines_of_different_bases() -> None:
    with pytest.raises(ValueError):
        Router([], NoAdapters())
    mixed = [StaticEngine(unused_url(), "a"), StaticEngine(unused_url(), "b")]
    with pytest.raises(ValueError):
        Router(mixed, NoAdapters())


def test_the_gateway_process_imports_no_ml_stack(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import asyncio, sys
        from gateway.app import create_app
        from gateway.settings import GatewaySettings

        async def main():
            app = create_app(GatewaySettings(data_dir={str(tmp_path)!r},
                                             engine_urls=["http://127.0.0.1:9"]))
            async with app.router.lifespan_context(app):
                pass

        asyncio.run(main())
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in
                       ("torch", "transformers", "vllm", "peft"))
        print(heavy)
    """)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout
