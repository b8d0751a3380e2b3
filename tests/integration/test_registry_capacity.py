"""Many adapters, few slots, against the real vLLM engine: hot load/unload under traffic, LRU
eviction with 20 adapters in 2 slots. Requests are short (a few tokens) to suit 2 CPU cores."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest

from gateway.engines.managed import ManagedVLLMEngine
from gateway.settings import GatewaySettings
from loadtest.adapters_gen import write_random_lora
from tests.integration.registry_gateway import ADAPTER_SCALE, engine_adapters, registry_gateway

pytestmark = pytest.mark.integration

CYCLES = 100


async def test_hot_load_unload_cycles_while_streaming(
    vllm_engine: ManagedVLLMEngine,
    engine_settings: GatewaySettings,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    root = tmp_path / "adapters"
    async with registry_gateway(engine_settings, vllm_engine, tmp_path / "data", root) as gw:
        for name, seed in (("hot-x", 41), ("hot-y", 42), ("hot-z", 43)):
            await gw.register(
                name, write_random_lora(root / name, tiny_model_dir, seed=seed, scale=ADAPTER_SCALE)
            )
        stop = asyncio.Event()
        served: Counter[str] = Counter()
        failures: list[str] = []

        async def streamer(name: str) -> None:
            while not stop.is_set():
                try:
                    text = await gw.stream(name, max_tokens=4)
                    assert text, "empty completion"
                    served[name] += 1
                except Exception as exc:
                    failures.append(f"{name}: {exc!r}")

        streamers = [asyncio.create_task(streamer(n)) for n in ("hot-y", "hot-z", "hot-y")]
        started = time.perf_counter()
        for cycle in range(CYCLES):
            loaded = await gw.admin.post("/admin/adapters/hot-x/load")
            assert loaded.status_code == 200 and loaded.json()["state"] == "loaded", loaded.text
            if cycle % 10 == 0:  # the cycled adapter itself answers while loaded
                served["hot-x"] += bool(await gw.complete("hot-x", max_tokens=4))
            unloaded = await gw.admin.post("/admin/adapters/hot-x/unload")
            assert unloaded.status_code == 200, unloaded.text
            assert unloaded.json()["state"] == "registered"
        elapsed = time.perf_counter() - started
        stop.set()
        await asyncio.gather(*streamers)

        assert failures == []
        assert served["hot-y"] > 0 and served["hot-z"] > 0 and served["hot-x"] == CYCLES // 10
        stats = gw.events
        assert stats.load_failures == 0
        assert stats.loads >= CYCLES and stats.unloads >= CYCLES
        print(
            f"\n{CYCLES} load/unload cycles in {elapsed:.1f} s "
            f"(mean load {stats.load_seconds_total / stats.loads * 1000:.0f} ms, "
            f"max {stats.load_seconds_max * 1000:.0f} ms) while serving "
            f"{served['hot-y'] + served['hot-z']} streams"
        )
        upstream_x = (await gw.admin.get("/admin/adapters/hot-x")).json()["upstream_name"]
        assert upstream_x not in await engine_adapters(vllm_engine)


async def test_twenty_adapters_two_slots(
    vllm_engine: ManagedVLLMEngine,
    engine_settings: GatewaySettings,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    root = tmp_path / "adapters"
    names = [f"many-{i:02d}" for i in range(20)]
    async with registry_gateway(
        engine_settings, vllm_engine, tmp_path / "data", root, capacity=2
    ) as gw:
        upstreams = {}
        for i, name in enumerate(names):
            created = await gw.register(
                name,
                write_random_lora(root / name, tiny_model_dir, seed=100 + i, scale=ADAPTER_SCALE),
            )
            upstreams[name] = str(created["upstream_name"])
        listed = {m.id for m in (await gw.openai.models.list()).data}
        assert set(names) <= listed

        answers: dict[str, str] = {}
        for pair in range(0, len(names), 2):  # two at a time: both slots busy together
            batch = names[pair : pair + 2]
            texts = await asyncio.gather(*(gw.complete(n, max_tokens=4) for n in batch))
            answers.update(zip(batch, texts, strict=True))
            on_engine = await engine_adapters(vllm_engine)
            assert len(on_engine & set(upstreams.values())) <= 2
        assert all(answers[name] for name in names)
        assert len(set(answers.values())) > 1  # different adapters, different outputs

        stats = gw.events
        assert stats.loads == 20 and stats.evictions == 18 and stats.load_failures == 0
        states = Counter(a["state"] for a in (await gw.admin.get("/admin/adapters")).json()["data"])
        assert states == {"loaded": 2, "registered": 18}
        # An evicted adapter comes back on its next request.
        assert await gw.complete(names[0], max_tokens=4) == answers[names[0]]
        assert stats.evictions == 19
