"""The registry is the source of truth: a gateway restart keeps registrations and re-loads the
desired adapters; an engine killed and restarted gets its adapters back with no API call."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import openai
import pytest

from gateway.engines.managed import ManagedVLLMEngine
from gateway.settings import GatewaySettings
from loadtest.adapters_gen import write_random_lora
from tests.integration.registry_gateway import ADAPTER_SCALE, engine_adapters, registry_gateway

pytestmark = pytest.mark.integration


async def _wait_for_adapters(engine: ManagedVLLMEngine, wanted: set[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not wanted <= await engine_adapters(engine):
        assert time.monotonic() < deadline, f"{wanted} not all loaded within {timeout_s} s"
        await asyncio.sleep(0.2)


async def test_gateway_restart_keeps_registrations(
    vllm_engine: ManagedVLLMEngine,
    engine_settings: GatewaySettings,
    tiny_model_dir: Path,
    tmp_path: Path,
    db_url: str,
) -> None:
    # On the SQLite file and on PostgreSQL (tests/conftest.py): the registry a replica shares.
    root, data = tmp_path / "adapters", tmp_path / "data"
    paths = {
        name: write_random_lora(root / name, tiny_model_dir, seed=seed, scale=ADAPTER_SCALE)
        for name, seed in (("keep-a", 51), ("keep-b", 52), ("keep-c", 53))
    }
    async with registry_gateway(
        engine_settings, vllm_engine, data, root, database_url=db_url
    ) as gw:
        a = await gw.register("keep-a", paths["keep-a"], load=True)
        b = await gw.register("keep-b", paths["keep-b"], pinned=True)
        await gw.register("keep-c", paths["keep-c"])
        before = {name: await gw.complete(name) for name in paths}
    # The engine forgets them too (as after a full restart): the new gateway must re-load.
    for upstream in (a["upstream_name"], b["upstream_name"]):
        await vllm_engine.client.unload_lora(str(upstream))

    async with registry_gateway(
        engine_settings, vllm_engine, data, root, database_url=db_url
    ) as gw:
        listing = (await gw.admin.get("/admin/adapters")).json()["data"]
        assert [(x["name"], x["pinned"]) for x in listing] == [
            ("keep-a", False),
            ("keep-b", True),
            ("keep-c", False),
        ]
        assert {a["upstream_name"], b["upstream_name"]} <= await engine_adapters(vllm_engine)
        assert {m.id for m in (await gw.openai.models.list()).data} >= set(paths)
        after = {name: await gw.complete(name) for name in paths}
        assert after == before


@pytest.mark.engine_restart
async def test_engine_restart_gets_adapters_back(
    vllm_engine: ManagedVLLMEngine,
    engine_settings: GatewaySettings,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    root = tmp_path / "adapters"
    async with registry_gateway(engine_settings, vllm_engine, tmp_path / "data", root) as gw:
        pinned = await gw.register(
            "rs-pinned",
            write_random_lora(root / "p", tiny_model_dir, seed=61, scale=ADAPTER_SCALE),
            pinned=True,
        )
        used = await gw.register(
            "rs-used", write_random_lora(root / "u", tiny_model_dir, seed=62, scale=ADAPTER_SCALE)
        )
        expected = await gw.complete("rs-used")
        wanted = {str(pinned["upstream_name"]), str(used["upstream_name"])}
        assert wanted <= await engine_adapters(vllm_engine)

        restarts = vllm_engine.restarts
        vllm_engine.kill_process()
        deadline = time.monotonic() + 30
        while vllm_engine.ready:  # the supervisor notices the death first
            assert time.monotonic() < deadline, "the killed engine still looks ready"
            await asyncio.sleep(0.05)
        with pytest.raises(openai.APIStatusError) as caught:
            await gw.complete("rs-used")
        assert caught.value.status_code == 503
        await vllm_engine.wait_ready(300)
        # At least one restart: on a loaded machine a start attempt can fail and the supervisor
        # tries again; what matters is that the engine came back and got its adapters.
        assert vllm_engine.restarts >= restarts + 1
        # The ready listener re-applies the registry's desired state; nobody calls the API.
        await _wait_for_adapters(vllm_engine, wanted, 60)
        detail = (await gw.admin.get("/admin/adapters/rs-used")).json()
        assert detail["state"] == "loaded" and detail["engines"] == [vllm_engine.name]
        assert await gw.complete("rs-used") == expected
        assert gw.events.load_failures == 0
