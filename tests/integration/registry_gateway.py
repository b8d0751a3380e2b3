"""A real gateway with the adapter registry, around the session's shared vLLM engine.

:func:`registry_gateway` builds the lifecycle exactly as the app does
(:func:`gateway.lifecycle.startup.build_lifecycle`: SQLite registry in the data dir, validator
for the tiny base), hands it to ``create_app`` (which serves the admin API over it) and serves
the app over real HTTP from the test's event loop. Clients: the official ``openai`` SDK for
``/v1`` and an httpx client carrying the admin token for ``/admin``. Used by
tests/integration/test_registry_*.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from openai import AsyncOpenAI
from pydantic import SecretStr

from gateway.app import create_app
from gateway.engines.base import Engine
from gateway.lifecycle.service import AdapterLifecycle
from gateway.lifecycle.startup import build_lifecycle, scan_adapters_dir
from gateway.settings import GatewaySettings
from tests.support.gateway_server import serve_in_loop

ADMIN_TOKEN = "registry-integration-token"
#: Weights of the adapters written for the tiny model (loadtest.adapters_gen): N(0, 0.1) makes
#: the delta about as large as its own projections, so greedy output visibly differs.
ADAPTER_SCALE = 0.1


@dataclass
class LifecycleCounts:
    """The lifecycle's events counted in process (its observer in these tests)."""

    loads: int = 0
    unloads: int = 0
    evictions: int = 0
    load_failures: int = 0
    load_seconds_total: float = 0.0
    load_seconds_max: float = 0.0

    def on_load(self, name: str, seconds: float) -> None:
        self.loads += 1
        self.load_seconds_total += seconds
        self.load_seconds_max = max(self.load_seconds_max, seconds)

    def on_unload(self, name: str) -> None:
        self.unloads += 1

    def on_evict(self, name: str) -> None:
        self.evictions += 1

    def on_load_failed(self, name: str) -> None:
        self.load_failures += 1

    def on_delete(self, name: str) -> None:
        pass


@dataclass
class RegistryGateway:
    url: str
    openai: AsyncOpenAI
    admin: httpx.AsyncClient
    lifecycle: AdapterLifecycle
    settings: GatewaySettings
    events: LifecycleCounts

    async def register(self, name: str, path: Path, **extra: object) -> dict[str, object]:
        response = await self.admin.post(
            "/admin/adapters", json={"name": name, "path": str(path), **extra}
        )
        assert response.status_code in (200, 201), response.text
        return response.json()  # type: ignore[no-any-return]

    async def complete(
        self, model: str, *, max_tokens: int = 6, prompt: str = "hello there"
    ) -> str:
        result = await self.openai.completions.create(
            model=model, prompt=prompt, max_tokens=max_tokens, temperature=0
        )
        assert result.model == model
        return result.choices[0].text

    async def stream(self, model: str, *, max_tokens: int = 6, prompt: str = "hello there") -> str:
        stream = await self.openai.completions.create(
            model=model, prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True
        )
        parts = [chunk.choices[0].text async for chunk in stream if chunk.choices]
        return "".join(parts)


async def engine_completion(
    engine: Engine, upstream_model: str, *, max_tokens: int = 6, prompt: str = "hello there"
) -> str:
    """The same request straight to vLLM, bypassing the gateway."""
    response = await engine.client.http.post(
        "/v1/completions",
        json={
            "model": upstream_model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0,
        },
    )
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["text"])


async def engine_adapters(engine: Engine) -> set[str]:
    return {m["id"] for m in await engine.client.list_models() if m.get("parent") is not None}


@asynccontextmanager
async def registry_gateway(
    engine_settings: GatewaySettings,
    engine: Engine,
    data_dir: Path,
    adapter_root: Path,
    *,
    capacity: int | None = None,
    adapters_dir: Path | None = None,
    settings_update: dict[str, object] | None = None,
    database_url: str | None = None,
) -> AsyncIterator[RegistryGateway]:
    settings = engine_settings.model_copy(
        update={
            # model_copy does not validate: give the fields their final types.
            "data_dir": data_dir,
            "database_url": database_url,
            "adapter_roots": [adapter_root],
            "admin_token": SecretStr(ADMIN_TOKEN),
            "adapters_dir": adapters_dir,
            **(settings_update or {}),
        }
    )
    events = LifecycleCounts()
    lifecycle = build_lifecycle(settings, [engine], capacity=capacity, observer=events)
    try:
        await lifecycle.start()
        if adapters_dir is not None:
            await scan_adapters_dir(lifecycle, adapters_dir)
        app = create_app(settings, engines=[engine], lifecycle=lifecycle)
        async with serve_in_loop(app) as url:
            client = AsyncOpenAI(
                base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120.0
            )
            async with httpx.AsyncClient(
                base_url=url, timeout=120.0, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
            ) as admin:
                try:
                    yield RegistryGateway(url, client, admin, lifecycle, settings, events)
                finally:
                    await client.close()
    finally:
        await lifecycle.close()
