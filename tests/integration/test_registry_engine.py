"""Registry + lifecycle against the real vLLM engine: register then serve, swap versions under
traffic, validate against the real tiny base model, scan an adapters dir."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from adapters.layout import read_base_model
from gateway.engines.managed import ManagedVLLMEngine
from gateway.settings import GatewaySettings
from loadtest.adapters_gen import write_random_lora
from tests.integration.registry_gateway import (
    ADAPTER_SCALE,
    engine_adapters,
    engine_completion,
    registry_gateway,
)

pytestmark = pytest.mark.integration


async def test_register_then_model_answers(
    vllm_engine: ManagedVLLMEngine,
    engine_settings: GatewaySettings,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    root = tmp_path / "adapters"
    path = write_random_lora(root / "reg-a1", tiny_model_dir, seed=11, scale=ADAPTER_SCALE)
    async with registry_gateway(engine_settings, vllm_engine, tmp_path / "data", root) as gw:
        created = await gw.register("reg-a1", path)
        assert created["state"] == "registered"
        models = [m.id for m in (await gw.openai.models.list()).data]
        assert models[0] == vllm_engine.base_model and "reg-a1" in models

        text = await gw.complete("reg-a1")
        streamed = await gw.stream("reg-a1")
        upstream = str(created["upstream_name"])
        assert text and streamed == text
        assert text == await engine_completion(vllm_engine, upstream)
        assert text != await gw.complete(vllm_engine.base_model)  # the adapter changes output
        detail = (await gw.admin.get("/admin/adapters/reg-a1")).json()
        assert detail["state"] == "loaded" and detail["engines"] == [vllm_engine.name]
        assert gw.events.loads == 1 and gw.events.load_seconds_total > 0

        deleted = await gw.admin.delete("/admin/adapters/reg-a1")
        assert deleted.status_code == 200
        assert upstream not in await engine_adapters(vllm_engine)
        missing = await gw.admin.get("/admin/adapters/reg-a1")
        assert missing.status_code == 404


async def test_new_version_swaps_without_failing_streams(
    vllm_engine: ManagedVLLMEngine,
    engine_settings: GatewaySettings,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    root = tmp_path / "adapters"
    v1 = write_random_lora(root / "swap-v1", tiny_model_dir, seed=21, scale=ADAPTER_SCALE)
    v2 = write_random_lora(root / "swap-v2", tiny_model_dir, seed=22, scale=ADAPTER_SCALE)
    async with registry_gateway(engine_settings, vllm_engine, tmp_path / "data", root) as gw:
        first = await gw.register("swap", v1, load=True)
        v1_text = await gw.complete("swap", max_tokens=8)
        failures: list[str] = []
        outputs: list[str] = []
        stop = asyncio.Event()

        async def client() -> None:
            while not stop.is_set():
                try:
                    outputs.append(await gw.stream("swap", max_tokens=8))
                except Exception as exc:
                    failures.append(repr(exc))

        clients = [asyncio.create_task(client()) for _ in range(3)]
        await asyncio.sleep(0.5)
        second = await gw.register("swap", v2, new_version=True)
        assert second["active_version"] == 2
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*clients)
        assert failures == []
        v2_text = await gw.complete("swap", max_tokens=8)
        assert v2_text == await engine_completion(
            vllm_engine, str(second["upstream_name"]), max_tokens=8
        )
        assert v1_text != v2_text
        assert outputs and outputs[-1] == v2_text
        for _ in range(100):  # the old version goes once its streams are done
            if str(first["upstream_name"]) not in await engine_adapters(vllm_engine):
                break
            await asyncio.sleep(0.05)
        assert str(first["upstream_name"]) not in await engine_adapters(vllm_engine)

        restored = await gw.admin.post("/admin/adapters/swap/restore", json={"version": 1})
        assert restored.status_code == 200 and restored.json()["active_version"] == 1
        assert await gw.complete("swap", max_tokens=8) == v1_text


async def test_validation_against_the_real_base(
    vllm_engine: ManagedVLLMEngine,
    engine_settings: GatewaySettings,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    base = read_base_model(tiny_model_dir)
    assert "model.layers.0.self_attn.q_proj" in base.modules
    root = tmp_path / "adapters"
    async with registry_gateway(engine_settings, vllm_engine, tmp_path / "data", root) as gw:
        cases = {
            "rank": (
                write_random_lora(root / "rank", tiny_model_dir, rank=32, scale=ADAPTER_SCALE),
                400,
                "rank_exceeds_max",
            ),
            "outside": (
                write_random_lora(tmp_path / "outside", tiny_model_dir, scale=ADAPTER_SCALE),
                403,
                "path_outside_roots",
            ),
        }
        for name, (path, status, code) in cases.items():
            response = await gw.admin.post(
                "/admin/adapters", json={"name": name, "path": str(path)}
            )
            assert response.status_code == status, response.text
            assert response.json()["error"]["code"] == code
        assert [m.id for m in (await gw.openai.models.list()).data] == [vllm_engine.base_model]


async def test_adapters_dir_scan_serves_without_api_calls(
    vllm_engine: ManagedVLLMEngine,
    engine_settings: GatewaySettings,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    scan = tmp_path / "trained"
    write_random_lora(scan / "scan-a", tiny_model_dir, seed=31, scale=ADAPTER_SCALE)
    write_random_lora(scan / "scan-bad", tiny_model_dir, rank=32, scale=ADAPTER_SCALE)
    async with registry_gateway(
        engine_settings, vllm_engine, tmp_path / "data", scan, adapters_dir=scan
    ) as gw:
        models = [m.id for m in (await gw.openai.models.list()).data]
        assert "scan-a" in models and "scan-bad" not in models
        assert await gw.complete("scan-a")
