"""Fixtures for in-process gateway tests: the real app and a real server, a fake upstream.

``gateway`` serves ``create_app`` with uvicorn on a free port, in front of the project's one
:class:`~loadtest.fake_vllm.FakeVLLM` (no model; scripted by tests for fault injection, every
request it receives recorded) reached through a
:class:`~tests.support.gateway_server.StaticEngine`. One adapter,
``style``, maps to the versioned upstream name ``style@v2`` so the model rename is exercised.
Tests that need other settings (API keys, a small body limit) build their own with
``make_gateway``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio

from gateway.app import create_app
from gateway.engines.base import EngineState
from gateway.engines.client import ClientLimits
from gateway.settings import GatewaySettings
from loadtest.fake_vllm import FakeBehaviour, FakeVLLM, serving
from tests.gateway.openai_env import ADAPTER, ADAPTER_UPSTREAM, BASE
from tests.support.adapter_resolver import EngineAdapters, LoadedAdapter
from tests.support.gateway_server import StaticEngine, serve_in_loop


@dataclass
class Gateway:
    url: str
    http: httpx.AsyncClient
    fake: FakeVLLM
    engine: StaticEngine
    adapters: EngineAdapters
    settings: GatewaySettings


GatewayFactory = Callable[..., AbstractAsyncContextManager[Gateway]]


@pytest.fixture(scope="session")
def make_gateway(tmp_path_factory: pytest.TempPathFactory) -> GatewayFactory:
    @asynccontextmanager
    async def make(
        *, read_timeout_s: float = 30.0, **settings_fields: Any
    ) -> AsyncIterator[Gateway]:
        data_dir = tmp_path_factory.mktemp("gateway-data")
        settings = GatewaySettings(data_dir=data_dir, **settings_fields)
        fake = FakeVLLM(FakeBehaviour(model=BASE, chunks=2, record_requests=True))
        async with serving(fake) as upstream_url:
            engine = StaticEngine(
                upstream_url,
                BASE,
                client_limits=ClientLimits(connect_timeout_s=2.0, read_timeout_s=read_timeout_s),
            )
            adapters = EngineAdapters(engine, [LoadedAdapter(ADAPTER, ADAPTER_UPSTREAM)])
            app = create_app(settings, engines=[engine], adapter_resolver=adapters)
            try:
                async with (
                    serve_in_loop(app) as url,
                    httpx.AsyncClient(base_url=url, timeout=30.0) as http,
                ):
                    yield Gateway(url, http, fake, engine, adapters, settings)
            finally:
                await engine.close_client()

    return make


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def shared_gateway(make_gateway: GatewayFactory) -> AsyncIterator[Gateway]:
    async with make_gateway() as gw:
        yield gw


@pytest.fixture
def gateway(shared_gateway: Gateway) -> Gateway:
    """The module's gateway, its fake upstream and engine reset to their defaults."""
    shared_gateway.fake.reset()
    shared_gateway.engine.state = EngineState.READY
    return shared_gateway
