"""RemoteVLLMEngine against a real vLLM server (the shared engine, watched as if remote)."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from gateway.engines.base import EngineState
from gateway.engines.factory import build_engines
from gateway.engines.managed import ManagedVLLMEngine
from gateway.engines.remote import RemoteVLLMEngine
from gateway.settings import GatewaySettings

pytestmark = pytest.mark.integration


async def test_remote_engine_reads_the_served_base_model(
    vllm_engine: ManagedVLLMEngine, engine_settings: GatewaySettings
) -> None:
    settings = engine_settings.model_copy(
        update={
            "engine_urls": [vllm_engine.url],
            "engine_api_key": SecretStr(vllm_engine.api_key or ""),  # model_copy: no validation
            "served_model_name": None,
            "base_model": "something-else",
        }
    )
    [engine] = build_engines(settings)
    assert isinstance(engine, RemoteVLLMEngine)
    assert engine.base_model == "something-else"
    await engine.start()
    try:
        await engine.wait_ready(30)
        assert engine.status().state is EngineState.READY
        assert engine.base_model == vllm_engine.base_model
    finally:
        await engine.stop()
    assert engine.status().state is EngineState.STOPPED
