"""The managed vLLM engine is not an open door (real vLLM 0.32, the session's shared engine).

Without the engine's key a local caller gets 401 on the data plane, on vLLM's runtime LoRA
endpoints and on the paths vLLM itself leaves open (``/invocations``, ``/tokenize``); the probes
stay open. Through the gateway the same requests work: its engine client sends the key on the
data plane (chat) and the control plane (an admin hot-load). The key reaches vLLM in its
environment, not on its command line, and no gateway secret does.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from gateway.engines.managed import ManagedVLLMEngine
from gateway.settings import GatewaySettings
from tests.integration.registry_gateway import ADMIN_TOKEN, engine_adapters, registry_gateway

pytestmark = pytest.mark.integration

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}


def _proc(pid: int, name: str) -> str:
    return Path(f"/proc/{pid}/{name}").read_bytes().replace(b"\0", b"\n").decode()


async def test_engine_refuses_callers_without_its_key(
    vllm_engine: ManagedVLLMEngine, tiny_adapters: dict[str, Path]
) -> None:
    key = vllm_engine.api_key
    assert key
    chat = {"model": vllm_engine.base_model, **CHAT}
    load = {"lora_name": "key-test-a1", "lora_path": str(tiny_adapters["a1"])}
    async with httpx.AsyncClient(base_url=vllm_engine.url, timeout=120) as http:
        for headers in ({}, {"Authorization": "Bearer not-the-key"}):
            for path, body in (
                ("/v1/chat/completions", chat),
                ("/v1/load_lora_adapter", load),
                ("/v1/unload_lora_adapter", {"lora_name": "key-test-a1"}),
                ("/invocations", chat),  # vLLM's own --api-key leaves this open
                ("/tokenize", {"model": vllm_engine.base_model, "prompt": "hi"}),
            ):
                response = await http.post(path, json=body, headers=headers)
                assert response.status_code == 401, (path, headers, response.text)
            assert (await http.get("/v1/models", headers=headers)).status_code == 401
        assert (await http.get("/health")).status_code == 200
        assert (await http.get("/metrics")).status_code == 200
        authorized = {"Authorization": f"Bearer {key}"}
        ok = await http.post("/invocations", json=chat, headers=authorized)
        assert ok.status_code == 200, ok.text
    assert "key-test-a1" not in await engine_adapters(vllm_engine)


async def test_key_is_in_the_engine_environment_not_its_command_line(
    vllm_engine: ManagedVLLMEngine,
) -> None:
    key = vllm_engine.api_key
    pid = vllm_engine.pid
    assert key and pid
    assert f"VLLM_API_KEY={key}" in _proc(pid, "environ").splitlines()
    assert key not in _proc(pid, "cmdline")
    assert "LORA_GATEWAY_" not in _proc(pid, "environ")


async def test_requests_through_the_gateway_carry_the_key(
    vllm_engine: ManagedVLLMEngine,
    engine_settings: GatewaySettings,
    tiny_adapters: dict[str, Path],
    tmp_path: Path,
) -> None:
    root = tiny_adapters["a2"].parent
    async with registry_gateway(engine_settings, vllm_engine, tmp_path / "data", root) as gw:
        # control plane: an admin hot-load makes the gateway call vLLM's load_lora_adapter
        registered = await gw.register("key-test-a2", tiny_adapters["a2"], load=True)
        assert registered["state"] == "loaded", registered
        # data plane, base model and adapter, streamed and not
        assert await gw.complete(vllm_engine.base_model)
        assert await gw.complete("key-test-a2")
        assert await gw.stream("key-test-a2")
        answer = await gw.openai.chat.completions.create(
            model="key-test-a2", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        assert answer.model == "key-test-a2"
        removed = await gw.admin.delete("/admin/adapters/key-test-a2")
        assert removed.status_code in (200, 204), removed.text
    assert ADMIN_TOKEN not in _proc(vllm_engine.pid or 0, "environ")
