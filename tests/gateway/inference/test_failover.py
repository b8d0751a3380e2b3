"""Failover across 2 engines: a request whose engine refuses the connection before any byte
reached the client is retried once on another ready engine; a stream already started ends with
an SSE error event.

Real app, real uvicorn, real HTTP: one engine is a FAKE vLLM (tests/support/fake_upstream.py),
the other a loopback port nothing listens on (a killed engine its supervisor has not noticed
yet: still READY).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from starlette.responses import Response

from gateway.app import create_app
from gateway.engines.base import EngineState
from gateway.engines.client import ClientLimits
from gateway.inference.routing import Router
from gateway.placement.stats import PlacementEvent
from gateway.settings import GatewaySettings
from tests.gateway.openai_env import ADAPTER, ADAPTER_UPSTREAM, BASE, chat
from tests.support.adapter_resolver import EngineAdapters, LoadedAdapter
from tests.support.fake_upstream import FakeUpstream, Recorded, chunk_event
from tests.support.gateway_server import StaticEngine, serve_in_loop, unused_url


@dataclass
class TwoEngines:
    http: httpx.AsyncClient
    fake: FakeUpstream
    dead: StaticEngine
    alive: StaticEngine
    router: Router


@pytest.fixture
async def two(tmp_path: Path) -> AsyncIterator[TwoEngines]:
    fake = FakeUpstream()
    limits = ClientLimits(connect_timeout_s=2.0, read_timeout_s=10.0)
    async with serve_in_loop(fake.app()) as upstream_url:
        dead = StaticEngine(unused_url(), BASE, name="dead", client_limits=limits)
        alive = StaticEngine(upstream_url, BASE, name="alive", client_limits=limits)
        adapters = EngineAdapters(alive, [LoadedAdapter(ADAPTER, ADAPTER_UPSTREAM)])
        app = create_app(
            GatewaySettings(data_dir=tmp_path), engines=[dead, alive], adapter_resolver=adapters
        )
        try:
            async with (
                serve_in_loop(app) as url,
                httpx.AsyncClient(base_url=url, timeout=30.0) as http,
            ):
                yield TwoEngines(http, fake, dead, alive, app.state.services.router)
        finally:
            await dead.close_client()
            await alive.close_client()


async def test_unary_requests_fail_over_to_the_other_engine(two: TwoEngines) -> None:
    # Ties rotate between the engines: some start on the dead one.
    for _ in range(6):
        response = await two.http.post("/v1/chat/completions", json=chat())
        assert response.status_code == 200, response.text
    assert len(two.fake.requests) == 6
    failovers = two.router.stats.total(PlacementEvent.FAILOVER)
    assert failovers >= 1
    assert two.router.stats.items() == [("dead", "failover", failovers)]


async def test_streams_fail_over_before_the_first_byte(two: TwoEngines) -> None:
    for _ in range(4):
        async with two.http.stream(
            "POST", "/v1/chat/completions", json=chat(stream=True)
        ) as response:
            assert response.status_code == 200
            body = (await response.aread()).decode()
        assert body.rstrip().endswith("data: [DONE]"), body
    assert len(two.fake.requests) == 4


async def test_with_no_other_ready_engine_the_client_gets_a_clean_503(two: TwoEngines) -> None:
    two.alive.state = EngineState.DOWN
    response = await two.http.post("/v1/chat/completions", json=chat())
    assert response.status_code == 503
    assert response.json()["error"]["type"]
    assert two.fake.requests == []


async def test_a_stream_broken_after_its_start_ends_with_an_sse_error_event(
    two: TwoEngines,
) -> None:
    two.dead.state = EngineState.DOWN  # every request on the fake, which breaks its stream

    async def broken(recorded: Recorded) -> Response:
        return two.fake.stream([chunk_event(ADAPTER_UPSTREAM, "half")], fail_at_end=True)

    two.fake.handler = broken
    async with two.http.stream("POST", "/v1/chat/completions", json=chat(stream=True)) as resp:
        assert resp.status_code == 200
        body = (await resp.aread()).decode()
    events = [line[6:] for line in body.splitlines() if line.startswith("data: ")]
    last = json.loads(events[-1]) if events[-1] != "[DONE]" else json.loads(events[-2])
    assert "error" in last, body
