"""Fixtures for in-process gateway tests: the real app and a real server, a fake upstream.

``gateway`` serves ``create_app`` with uvicorn on a free port, in front of the project's one
:class:`~loadtest.fake_vllm.FakeVLLM` (no model; scripted by tests for fault injection, every
request it receives recorded) reached through a
:class:`~tests.support.gateway_server.StaticEngine`. Adapters come the production way: the app
opens its own lifecycle, which registers the ``--adapters-dir`` holding one written adapter,
``style``; it is loaded before the tests run, and its versioned upstream name
(:attr:`Gateway.adapter_upstream`) shows that the model rename is exercised.
Tests that need other settings (API keys, a small body limit) build their own with
``make_gateway``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio

from gateway.app import create_app
from gateway.engines.base import EngineState
from gateway.engines.basemodels import MARKER_FILE, RECIPE_VERSIONS
from gateway.engines.client import ClientLimits
from gateway.lifecycle.service import AdapterLifecycle
from gateway.settings import GatewaySettings
from loadtest.fake_vllm import FakeBehaviour, FakeVLLM, serving
from tests.adapters.builders import write_adapter, write_base_model
from tests.gateway.openai_env import ADAPTER, BASE
from tests.support.gateway_server import StaticEngine, serve_in_loop


@dataclass
class Gateway:
    url: str
    http: httpx.AsyncClient
    fake: FakeVLLM
    engine: StaticEngine
    lifecycle: AdapterLifecycle
    settings: GatewaySettings
    #: The engine's (versioned) LoRA name of ``style``.
    adapter_upstream: str

    def leases(self) -> int:
        """Requests holding ``style`` loaded right now."""
        return self.lifecycle.view(ADAPTER).active.leases


GatewayFactory = Callable[..., AbstractAsyncContextManager[Gateway]]


@pytest.fixture(scope="session")
def make_gateway(tmp_path_factory: pytest.TempPathFactory) -> GatewayFactory:
    @asynccontextmanager
    async def make(
        *, read_timeout_s: float = 30.0, recipe: str | None = None, **settings_fields: Any
    ) -> AsyncIterator[Gateway]:
        root = tmp_path_factory.mktemp("gateway")
        adapters_dir = root / "data" / "adapters" / "scanned"
        write_adapter(adapters_dir / ADAPTER, base_model=BASE, seed=1)
        base_dir = write_base_model(root / "models" / BASE)
        if recipe is not None:  # the base model reads as a prepared one (its model card)
            marker = {"recipe": recipe, "version": RECIPE_VERSIONS[recipe]}
            (base_dir / MARKER_FILE).write_text(json.dumps(marker))
        settings = GatewaySettings(
            data_dir=root / "data",
            base_model=str(base_dir),
            adapters_dir=adapters_dir,
            **settings_fields,
        )
        fake = FakeVLLM(FakeBehaviour(model=BASE, chunks=2, record_requests=True))
        async with serving(fake) as upstream_url:
            engine = StaticEngine(
                upstream_url,
                BASE,
                client_limits=ClientLimits(connect_timeout_s=2.0, read_timeout_s=read_timeout_s),
            )
            app = create_app(settings, engines=[engine])
            try:
                async with (
                    serve_in_loop(app) as url,
                    httpx.AsyncClient(base_url=url, timeout=30.0) as http,
                ):
                    lifecycle: AdapterLifecycle = app.state.lifecycle
                    view = await lifecycle.load(ADAPTER)
                    fake.requests.clear()
                    upstream = view.active.version.upstream_name
                    yield Gateway(url, http, fake, engine, lifecycle, settings, upstream)
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
