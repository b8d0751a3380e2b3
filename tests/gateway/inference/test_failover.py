"""Failover across 2 engines: a request whose engine refuses the connection before any byte
reached the client is retried once on another ready engine (its adapter loaded there); a stream
already started ends with an SSE error event.

Real app (its own adapter lifecycle, affinity placement), real uvicorn, real HTTP: one engine is
the project's FAKE vLLM (loadtest/fake_vllm), the other a loopback port nothing listens on (a
killed engine its supervisor has not noticed yet: it still reads READY).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gateway.app import create_app
from gateway.engines.base import EngineState
from gateway.engines.client import ClientLimits
from gateway.inference.routing import Router
from gateway.lifecycle.service import AdapterLifecycle
from gateway.placement.stats import PlacementEvent
from gateway.settings import GatewaySettings
from loadtest.fake_vllm import (
    FakeBehaviour,
    FakeVLLM,
    Recorded,
    Reply,
    Stream,
    chunk_event,
    serving,
)
from tests.adapters.builders import write_adapter, write_base_model
from tests.gateway.openai_env import ADAPTER, BASE, chat
from tests.support.gateway_server import StaticEngine, serve_in_loop, unused_url


@dataclass
class TwoEngines:
    http: httpx.AsyncClient
    fake: FakeVLLM
    dead: StaticEngine
    alive: StaticEngine
    router: Router
    lifecycle: AdapterLifecycle


@pytest.fixture
async def two(tmp_path: Path) -> AsyncIterator[TwoEngines]:
    adapters_dir = tmp_path / "data" / "adapters" / "scanned"
    write_adapter(adapters_dir / ADAPTER, base_model=BASE, seed=1)
    settings = GatewaySettings(
        data_dir=tmp_path / "data",
        base_model=str(write_base_model(tmp_path / "models" / BASE)),
        adapters_dir=adapters_dir,
    )
    fake = FakeVLLM(FakeBehaviour(model=BASE, chunks=2, record_requests=True))
    limits = ClientLimits(connect_timeout_s=2.0, read_timeout_s=10.0)
    async with serving(fake) as upstream_url:
        dead = StaticEngine(unused_url(), BASE, name="dead", client_limits=limits)
        alive = StaticEngine(upstream_url, BASE, name="alive", client_limits=limits)
        app = create_app(settings, engines=[dead, alive])
        try:
            async with (
                serve_in_loop(app) as url,
                httpx.AsyncClient(base_url=url, timeout=30.0) as http,
            ):
                services = app.state.services
                yield TwoEngines(http, fake, dead, alive, services.router, app.state.lifecycle)
        finally:
            await dead.close_client()
            await alive.close_client()


def completions(fake: FakeVLLM) -> list[Recorded]:
    return [r for r in fake.requests if r.path.endswith("/completions")]


@pytest.mark.parametrize("model", [BASE, ADAPTER])
async def test_unary_requests_fail_over_to_the_other_engine(two: TwoEngines, model: str) -> None:
    # Ties rotate between the engines: some start on the dead one.
    for _ in range(6):
        response = await two.http.post("/v1/chat/completions", json=chat(model))
        assert response.status_code == 200, response.text
        assert response.json()["model"] == model
    assert len(completions(two.fake)) == 6
    if model == BASE:
        assert two.router.stats.total(PlacementEvent.FAILOVER) >= 1
    else:  # its load failed over: it is resident on the live engine only, served there
        assert two.lifecycle.view(ADAPTER).active.engines == ("alive",)


async def test_streams_fail_over_before_the_first_byte(two: TwoEngines) -> None:
    for model in (BASE, ADAPTER, BASE, ADAPTER):
        async with two.http.stream(
            "POST", "/v1/chat/completions", json=chat(model, stream=True)
        ) as response:
            assert response.status_code == 200
            body = (await response.aread()).decode()
        assert body.rstrip().endswith("data: [DONE]"), body
    assert len(completions(two.fake)) == 4


async def test_with_no_other_ready_engine_the_client_gets_a_clean_503(two: TwoEngines) -> None:
    two.alive.state = EngineState.DOWN
    response = await two.http.post("/v1/chat/completions", json=chat())
    assert response.status_code == 503
    assert response.json()["error"]["type"]
    assert completions(two.fake) == []


async def test_a_stream_broken_after_its_start_ends_with_an_sse_error_event(
    two: TwoEngines,
) -> None:
    two.dead.state = EngineState.DOWN  # every request on the fake, which breaks its stream

    async def broken(recorded: Recorded) -> Reply | None:
        if not recorded.path.endswith("/completions"):
            return None
        return Stream([chunk_event(recorded.json()["model"], "half")], fail_at_end=True)

    two.fake.handler = broken
    async with two.http.stream("POST", "/v1/chat/completions", json=chat(stream=True)) as resp:
        assert resp.status_code == 200
        body = (await resp.aread()).decode()
    events = [line[6:] for line in body.splitlines() if line.startswith("data: ")]
    payloads = [json.loads(e) for e in events if e != "[DONE]"]
    assert "error" in payloads[-1], body
