"""Supervision of the real vLLM child: killed -> DOWN -> restarted -> READY, listeners re-run.

Runs against the shared session engine, last (``engine_restart`` marker), and leaves it READY.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from gateway.engines.base import Engine, EngineState
from gateway.engines.managed import ManagedVLLMEngine

pytestmark = [pytest.mark.integration, pytest.mark.engine_restart]


async def _wait_for_state(engine: Engine, state: EngineState, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while engine.status().state is not state:
        assert time.monotonic() < deadline, f"no {state} within {timeout_s} s: {engine.status()}"
        await asyncio.sleep(0.02)


async def test_killed_engine_is_restarted_and_ready_listeners_rerun(
    vllm_engine: ManagedVLLMEngine,
) -> None:
    ready_calls: list[int] = []

    async def on_ready(engine: Engine) -> None:
        ready_calls.append(engine.status().restarts)

    vllm_engine.add_ready_listener(on_ready)
    try:
        restarts_before = vllm_engine.restarts
        old_pid = vllm_engine.kill_process()

        await _wait_for_state(vllm_engine, EngineState.DOWN, 15)
        assert "exited with code -9" in vllm_engine.status().reason
        assert not vllm_engine.ready

        await vllm_engine.wait_ready(300)
        assert vllm_engine.restarts == restarts_before + 1
        assert ready_calls == [restarts_before + 1]
        assert vllm_engine.pid is not None and vllm_engine.pid != old_pid
        # The old process group (engine core, worker) is gone, not orphaned.
        with pytest.raises(ProcessLookupError):
            os.killpg(old_pid, 0)
        models = await vllm_engine.client.list_models()
        assert [m["id"] for m in models if m.get("parent") is None] == [vllm_engine.base_model]
    finally:
        vllm_engine.remove_ready_listener(on_ready)
