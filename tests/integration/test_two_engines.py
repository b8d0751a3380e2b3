"""Two real vLLM engines behind one gateway (``--engines 2``, affinity placement, tiny model):
adapters spread over both; one engine killed with SIGKILL -> requests go to the other (loading
its adapters there); the killed engine is restarted by its supervisor, rejoins empty and fills on
demand. The client is the official ``openai`` SDK.

Takes both cores for about two minutes (two engines of its own, not the session engine).
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import openai
import pytest

from gateway.app import create_app
from gateway.engines.managed import ManagedVLLMEngine
from gateway.lifecycle.service import AdapterLifecycle
from gateway.settings import GatewaySettings
from loadtest.adapters_gen import write_random_lora
from tests.integration.conftest import ENGINE_READY_TIMEOUT_S, TINY_SERVED_NAME
from tests.integration.registry_gateway import ADAPTER_SCALE
from tests.support.gateway_server import serve_in_loop

pytestmark = [pytest.mark.integration]

NAMES = ("p0", "p1", "p2", "p3")


async def ask(sdk: openai.AsyncOpenAI, model: str) -> str:
    answer = await sdk.completions.create(
        model=model, prompt="Hello", max_tokens=4, temperature=0.0
    )
    assert answer.model == model
    return answer.choices[0].text


async def test_adapters_spread_over_two_engines_and_survive_an_engine_kill(
    engine_settings: GatewaySettings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    settings = engine_settings.model_copy(
        update={"data_dir": tmp_path / "data", "engines": 2, "max_loras": 2, "max_cpu_loras": 2}
    )
    app = create_app(settings)
    async with serve_in_loop(app) as url:
        engines: list[ManagedVLLMEngine] = app.state.services.engines
        assert [e.name for e in engines] == ["engine-0", "engine-1"]
        assert len({e.port for e in engines}) == 2 and all(e.cpus for e in engines)
        await asyncio.gather(*(e.wait_ready(ENGINE_READY_TIMEOUT_S) for e in engines))
        lifecycle: AdapterLifecycle = app.state.lifecycle
        assert lifecycle.capacity == 4
        for seed, name in enumerate(NAMES):
            path = write_random_lora(
                tmp_path / "data" / "adapters" / name,
                tiny_model_dir,
                rank=8,
                seed=seed,
                scale=ADAPTER_SCALE,
            )
            await lifecycle.register(name, path)
        sdk = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        try:
            solo = {name: await ask(sdk, name) for name in NAMES}
            holders = {name: lifecycle.view(name).active.engines for name in NAMES}
            assert all(len(h) == 1 for h in holders.values()), holders
            assert {h[0] for h in holders.values()} == {"engine-0", "engine-1"}
            assert lifecycle.slots_used_per_engine() == {"engine-0": 2, "engine-1": 2}

            victim = next(e for e in engines if e.name == holders["p0"][0])
            survivor = next(e for e in engines if e is not victim)
            victim.kill_process(signal.SIGKILL)
            # At once, before its supervisor noticed: every adapter and the base answer, the
            # same greedy text, from the survivor.
            for name in (*NAMES, TINY_SERVED_NAME):
                text = await ask(sdk, name)
                if name in solo:
                    assert text == solo[name], name
            for name in NAMES:
                assert lifecycle.view(name).active.engines in ((), (survivor.name,))
            assert lifecycle.slots_used_per_engine()[survivor.name] <= 2

            await victim.wait_ready(ENGINE_READY_TIMEOUT_S)
            # Rejoined empty; it fills on demand: 4 adapters need both engines' slots again.
            for name in NAMES:
                assert await ask(sdk, name) == solo[name]
            used = lifecycle.slots_used_per_engine()
            assert used[victim.name] >= 1 and used[survivor.name] <= 2 and used[victim.name] <= 2
        finally:
            await sdk.close()
