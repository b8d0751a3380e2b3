"""create_app wires the parts together by itself: the adapter lifecycle (registry, admin API,
``--adapters-dir`` scan), the admin token, ``/v1/models`` from the registry, and ``/metrics``
fed by the lifecycle's events. No resolver is passed in: the app builds its own, as ``serve``
does. The engine is the FAKE vLLM of loadtest/fake_vllm, in process.
"""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.auth.admin_token import TOKEN_FILE
from gateway.settings import GatewaySettings
from loadtest.fake_vllm import FakeVLLM
from tests.adapters.builders import write_adapter, write_base_model
from tests.support.fake_engine import FakeEngine

BASE = "tinybase"
API_KEY = "client-key-123"


@dataclass
class App:
    http: httpx.AsyncClient
    upstream: FakeVLLM
    settings: GatewaySettings
    admin: dict[str, str]
    client: dict[str, str]

    async def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        response = await self.http.get("/metrics")  # no key, no token: like vLLM's
        assert response.status_code == 200
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        }


def sample(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@pytest.fixture
def adapters_dir(tmp_path: Path) -> Path:
    scanned = tmp_path / "data" / "adapters" / "scanned"
    write_adapter(scanned / "scan-a", base_model=BASE, seed=1)
    write_adapter(scanned / "scan-b", base_model=BASE, seed=2)
    return scanned


@pytest.fixture
async def app(tmp_path: Path, adapters_dir: Path) -> AsyncIterator[App]:
    settings = GatewaySettings(
        data_dir=tmp_path / "data",
        base_model=str(write_base_model(tmp_path / "models" / BASE)),
        adapters_dir=adapters_dir,
        api_keys=[API_KEY],  # type: ignore[list-item]
    )
    upstream = FakeVLLM()
    gateway = create_app(settings, engines=[FakeEngine(upstream, base_model=BASE)])
    token = (settings.data_dir / TOKEN_FILE).read_text().strip()
    async with gateway.router.lifespan_context(gateway):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=gateway), base_url="http://gw"
        ) as http:
            yield App(
                http,
                upstream,
                settings,
                admin={"Authorization": f"Bearer {token}"},
                client={"Authorization": f"Bearer {API_KEY}"},
            )


async def test_first_start_writes_a_private_admin_token(app: App) -> None:
    path = app.settings.data_dir / TOKEN_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert (await app.http.get("/admin/adapters")).status_code == 401
    # The admin API has its own token: a client key is not enough, and vice versa.
    assert (await app.http.get("/admin/adapters", headers=app.client)).status_code == 403
    assert (await app.http.get("/v1/models", headers=app.admin)).status_code == 401


async def test_adapters_dir_is_registered_at_start_and_listed(app: App) -> None:
    listing = (await app.http.get("/admin/adapters", headers=app.admin)).json()["data"]
    assert [a["name"] for a in listing] == ["scan-a", "scan-b"]
    models = (await app.http.get("/v1/models", headers=app.client)).json()["data"]
    assert [(m["id"], m["parent"]) for m in models] == [
        (BASE, None),
        ("scan-a", BASE),
        ("scan-b", BASE),
    ]
    assert app.upstream.calls == []  # registered, loaded on first use


async def test_every_registered_adapter_is_a_model_and_metrics_follow_the_registry(
    app: App, tmp_path: Path
) -> None:
    path = write_adapter(app.settings.managed_adapters_dir / "legal", base_model=BASE, seed=3)
    created = await app.http.post(
        "/admin/adapters", json={"name": "legal", "path": str(path)}, headers=app.admin
    )
    assert created.status_code == 201, created.text
    models = (await app.http.get("/v1/models", headers=app.client)).json()["data"]
    assert {m["id"]: m["parent"] for m in models}["legal"] == BASE

    loaded = await app.http.post("/admin/adapters/legal/load", headers=app.admin)
    assert loaded.json()["state"] == "loaded"
    samples = await app.metrics()
    assert sample(samples, "lora_gateway_adapter_loads_total", adapter="legal") == 1
    assert sample(samples, "lora_gateway_adapters_registered") == 3
    assert sample(samples, "lora_gateway_adapters_loaded", engine="fake") == 1
    assert sample(samples, "lora_gateway_engine_up", engine="fake") == 1
    # The engine's per-adapter view is scraped too (the fake vLLM serves a vLLM-like /metrics).
    assert sample(samples, "lora_gateway_engine_metrics_scrape_failures_total", engine="fake") == 0

    deleted = await app.http.delete("/admin/adapters/legal", headers=app.admin)
    assert deleted.status_code == 200
    models = (await app.http.get("/v1/models", headers=app.client)).json()["data"]
    assert "legal" not in {m["id"] for m in models}
    samples = await app.metrics()
    assert not [key for key in samples if ("adapter", "legal") in key[1]]
    assert sample(samples, "lora_gateway_adapters_registered") == 2
