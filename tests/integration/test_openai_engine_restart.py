"""The gateway while its engine is killed: 503 with Retry-After, then answers again once the
managed engine is back (the session engine is restarted by its supervisor and ends READY)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from gateway.app import create_app
from gateway.engines.base import EngineState
from gateway.engines.managed import ManagedVLLMEngine
from gateway.settings import GatewaySettings
from tests.integration.conftest import ENGINE_READY_TIMEOUT_S, TINY_SERVED_NAME
from tests.support.gateway_server import serve_in_loop

pytestmark = [pytest.mark.integration, pytest.mark.engine_restart]

BODY = {"model": TINY_SERVED_NAME, "prompt": "Hello", "max_tokens": 4, "temperature": 0.0}


@pytest_asyncio.fixture(loop_scope="session")
async def http(
    vllm_engine: ManagedVLLMEngine,
    engine_settings: GatewaySettings,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[httpx.AsyncClient]:
    settings = engine_settings.model_copy(update={"data_dir": tmp_path_factory.mktemp("gw")})
    app = create_app(settings, engines=[vllm_engine])
    async with serve_in_loop(app) as url, httpx.AsyncClient(base_url=url, timeout=60) as client:
        yield client


async def test_killed_engine_gives_503_then_recovers(
    http: httpx.AsyncClient, vllm_engine: ManagedVLLMEngine
) -> None:
    assert (await http.post("/v1/completions", json=BODY)).status_code == 200
    vllm_engine.kill_process(signal.SIGKILL)
    # Right after the kill the gateway may still see READY (connection refused) and then
    # DOWN or STARTING (no engine ready): 503 with Retry-After either way, while it is gone.
    seen = set()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        response = await http.post("/v1/completions", json=BODY)
        assert response.status_code == 503, response.text
        assert int(response.headers["retry-after"]) > 0
        assert response.json()["error"]["code"] == "engine_unavailable"
        seen.add(vllm_engine.status().state)
        await asyncio.sleep(0.1)
    assert seen - {EngineState.READY}, "the supervisor never noticed the kill"
    ready = await http.get("/readyz")
    assert ready.status_code == 503 and ready.json()["error"]["code"] == "not_ready"

    await vllm_engine.wait_ready(ENGINE_READY_TIMEOUT_S)
    assert (await http.get("/readyz")).status_code == 200
    response = await http.post("/v1/completions", json=BODY)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["text"]
