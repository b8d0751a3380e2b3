"""Real-engine fixtures: ONE managed vLLM process (tiny model, LoRA on) per test session.

Fixtures (all session-scoped unless said otherwise):

* ``engine_settings``: the :class:`~gateway.settings.GatewaySettings` the engine runs with: the
  tiny model from ``tiny_model_dir``, served as ``tiny``, float32, ``max_loras=2``,
  ``max_cpu_loras=4``, ``max_lora_rank=16``, fast health polling and restarts, data (and the
  engine log, ``<data_dir>/logs/engine-0.log``) in a session temp dir.
* ``vllm_engine``: a started :class:`~gateway.engines.managed.ManagedVLLMEngine`, READY. Stopped
  (whole process tree) at the end of the session.
* ``tiny_adapters``: two PEFT adapter directories for the tiny model (``{"a1": path, "a2":
  path}``, seeds 1 and 2), written by :func:`loadtest.adapters_gen.write_random_lora`.
* ``engine_openai`` (function scope): an ``openai.AsyncOpenAI`` talking to the engine's own API,
  with the engine's key (``vllm_engine.api_key``; the engine refuses requests without it).

Building the gateway around the same engine (no second vLLM)::

    settings = engine_settings.model_copy(update={"data_dir": tmp_path, "api_keys": [...]})
    app = create_app(settings, engines=[vllm_engine])

``create_app`` only starts and stops engines it built itself; engines passed in belong to the
caller (this fixture). An app that adds a ready listener to the shared engine must remove it
when it shuts down (``Engine.remove_ready_listener``), or later apps' restarts call stale ones.

Rules for tests on the shared engine:

* Do not rely on adapters another test loaded, and do not assume none are loaded: load what
  you need (``EngineClient.load_lora`` treats "already loaded" as success) under names unique to
  your module. The engine keeps at most 4 adapters in its CPU cache (vLLM evicts the least
  recently used) and runs 2 per batch.
* Tests that kill or restart the engine carry ``@pytest.mark.engine_restart``: they run after
  every other test of the session, and must leave the engine READY.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from openai import AsyncOpenAI

from gateway.engines.managed import ManagedVLLMEngine
from gateway.settings import EngineDType, GatewaySettings
from loadtest.adapters_gen import write_random_lora
from tests.integration.registry_gateway import ADAPTER_SCALE

ENGINE_READY_TIMEOUT_S = 300.0
TINY_SERVED_NAME = "tiny"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "engine_restart: kills or restarts the shared vLLM engine; runs last"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Move engine-restarting tests to the end, so no other test sees a restart."""
    disruptive = [item for item in items if item.get_closest_marker("engine_restart")]
    if disruptive:
        items[:] = [item for item in items if item not in disruptive] + disruptive


@pytest.fixture(scope="session")
def engine_settings(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> GatewaySettings:
    return GatewaySettings(
        base_model=str(tiny_model_dir),
        served_model_name=TINY_SERVED_NAME,
        data_dir=tmp_path_factory.mktemp("engine-data"),
        max_loras=2,
        max_cpu_loras=4,
        max_lora_rank=16,
        max_model_len=2048,
        # float32: vLLM's greedy tokens then equal HF+PEFT, and batched == solo exactly.
        engine_dtype=EngineDType.FLOAT32,
        engine_kv_cache_gib=1,
        engine_health_interval_s=0.5,
        engine_restart_backoff_s=0.5,
        engine_restart_backoff_max_s=5.0,
    )


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def vllm_engine(engine_settings: GatewaySettings) -> AsyncIterator[ManagedVLLMEngine]:
    engine = ManagedVLLMEngine(engine_settings)
    await engine.start()
    try:
        await engine.wait_ready(ENGINE_READY_TIMEOUT_S)
        yield engine
    finally:
        await engine.stop()


@pytest.fixture(scope="session")
def tiny_adapters(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-adapters")
    return {
        name: write_random_lora(root / name, tiny_model_dir, rank=8, seed=seed, scale=ADAPTER_SCALE)
        for name, seed in (("a1", 1), ("a2", 2))
    }


@pytest_asyncio.fixture(loop_scope="session")
async def engine_openai(vllm_engine: ManagedVLLMEngine) -> AsyncIterator[AsyncOpenAI]:
    client = AsyncOpenAI(
        base_url=f"{vllm_engine.url}/v1",
        api_key=vllm_engine.api_key,  # the key of this start (a new one after each restart)
        max_retries=0,
        timeout=120.0,
    )
    try:
        yield client
    finally:
        await client.close()
