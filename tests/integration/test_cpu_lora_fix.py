"""The mixed-batch proof: with the project's vLLM plugin, base and adapter requests sent
concurrently to a real vLLM each equal their solo greedy output.

Talks to the shared engine's own OpenAI API with the official SDK (no gateway in between).
``test_unfixed_engine_corrupts_mixed_batches`` starts a second engine WITHOUT the plugin to show
that the check catches the defect; it costs a vLLM start, so it runs only when
``LORA_GATEWAY_TEST_UNFIXED=1``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from openai import AsyncOpenAI

from gateway.engines.base import Engine
from gateway.engines.managed import ManagedVLLMEngine
from gateway.settings import GatewaySettings
from tests.support.mixed_batch import PROMPTS, MixedBatchResult, mixed_batch_check, solo_outputs

pytestmark = pytest.mark.integration

ADAPTER_PREFIX = "mixfix-"


async def _unload_our_adapters(engine: Engine) -> None:
    # Only ours: adapters other tests loaded on the shared engine stay where they are.
    for model in await engine.client.list_models():
        if model.get("parent") is not None and str(model["id"]).startswith(ADAPTER_PREFIX):
            await engine.client.unload_lora(str(model["id"]))


async def _run_check(
    engine: Engine, client: AsyncOpenAI, adapters: dict[str, Path]
) -> tuple[dict[tuple[str, str], str], MixedBatchResult]:
    """Base outputs before our adapters are loaded, then the mixed-batch check with them."""
    await _unload_our_adapters(engine)
    clean_base = await solo_outputs(client, [engine.base_model])
    names = []
    for name, path in adapters.items():
        await engine.client.load_lora(ADAPTER_PREFIX + name, str(path))
        names.append(ADAPTER_PREFIX + name)
    result = await mixed_batch_check(client, [engine.base_model, *names], requests=16, rounds=3)
    return clean_base, result


async def test_mixed_base_and_adapter_batches_equal_solo_outputs(
    vllm_engine: ManagedVLLMEngine, engine_openai: AsyncOpenAI, tiny_adapters: dict[str, Path]
) -> None:
    try:
        clean_base, result = await _run_check(vllm_engine, engine_openai, tiny_adapters)
    finally:
        await _unload_our_adapters(vllm_engine)  # free the shared engine's adapter slots
    base = vllm_engine.base_model

    # The adapters must visibly change the output, or this test could not see the defect.
    for name in tiny_adapters:
        for prompt in PROMPTS:
            assert result.solo[(ADAPTER_PREFIX + name, prompt)] != result.solo[(base, prompt)]
    # Base stays base while adapters occupy the LoRA slots ...
    for prompt in PROMPTS:
        assert result.solo[(base, prompt)] == clean_base[(base, prompt)]
    # ... and every concurrent request equals its solo output.
    assert result.mismatches == [], (
        f"{len(result.mismatches)} of {result.requests} concurrent requests differ from their "
        f"solo output: {result.mismatches}"
    )


@pytest.mark.skipif(
    os.environ.get("LORA_GATEWAY_TEST_UNFIXED") != "1",
    reason="starts a second vLLM; set LORA_GATEWAY_TEST_UNFIXED=1 to run",
)
async def test_unfixed_engine_corrupts_mixed_batches(
    engine_settings: GatewaySettings, tiny_adapters: dict[str, Path], tmp_path: Path
) -> None:
    settings = engine_settings.model_copy(update={"data_dir": tmp_path})
    # A VLLM_PLUGINS that names another plugin makes vLLM skip ours.
    engine = ManagedVLLMEngine(settings, name="unfixed", extra_env={"VLLM_PLUGINS": "none"})
    await engine.start()
    client: AsyncOpenAI | None = None
    try:
        await engine.wait_ready(300)
        client = AsyncOpenAI(base_url=f"{engine.url}/v1", api_key=engine.api_key, max_retries=0)
        assert "lora_gateway_cpu_lora_fix active" not in engine.log_path.read_text()
        clean_base, result = await _run_check(engine, client, tiny_adapters)
    finally:
        if client is not None:
            await client.close()
        await engine.stop()
    base = engine.base_model
    corrupted_solo = [p for p in PROMPTS if result.solo[(base, p)] != clean_base[(base, p)]]
    print(
        f"unfixed engine: {len(result.mismatches)} of {result.requests} concurrent requests "
        f"differ from solo; base solo corrupted for {len(corrupted_solo)} of {len(PROMPTS)} "
        f"prompts once adapters were loaded"
    )
    assert result.mismatches or corrupted_solo
