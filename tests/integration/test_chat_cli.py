"""``lora-gateway chat``, ``complete`` and ``status`` as an operator runs them, against a real
gateway (registry included) in front of the session's shared vLLM engine.

Each command is a real subprocess fed lines on stdin; URL and admin token come from the
environment (``LORA_GATEWAY_URL``, ``LORA_GATEWAY_ADMIN_TOKEN``) as for every command. At
temperature 0 what the CLI streams must equal what the OpenAI SDK gets for the same request,
history included for chat.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
from openai.types.chat import ChatCompletionMessageParam

from gateway.engines.managed import ManagedVLLMEngine
from gateway.settings import GatewaySettings
from loadtest.adapters_gen import write_random_lora
from tests.integration.conftest import TINY_SERVED_NAME
from tests.integration.registry_gateway import (
    ADAPTER_SCALE,
    ADMIN_TOKEN,
    RegistryGateway,
    registry_gateway,
)

pytestmark = pytest.mark.integration

ADAPTER = "cli-a1"
MAX_TOKENS = 8
CLI = str(Path(sys.executable).parent / "lora-gateway")


async def run_cli(url: str, stdin: str, *args: str) -> tuple[int, str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("LORA_GATEWAY_") and k != "OPENAI_API_KEY"
    }
    env |= {"LORA_GATEWAY_URL": url, "LORA_GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN}
    process = await asyncio.create_subprocess_exec(
        CLI,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin.encode()), 180)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def sdk_chat(gw: RegistryGateway, messages: list[ChatCompletionMessageParam]) -> str:
    reply = await gw.openai.chat.completions.create(
        model=ADAPTER, messages=messages, temperature=0, max_tokens=MAX_TOKENS
    )
    return reply.choices[0].message.content or ""


async def test_chat_complete_and_status_against_real_vllm(
    vllm_engine: ManagedVLLMEngine,
    engine_settings: GatewaySettings,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    root = tmp_path / "adapters"
    path = write_random_lora(root / ADAPTER, tiny_model_dir, seed=31, scale=ADAPTER_SCALE)
    async with registry_gateway(engine_settings, vllm_engine, tmp_path / "data", root) as gw:
        await gw.register(ADAPTER, path)
        common = ["--temperature", "0", "--max-tokens", str(MAX_TOKENS)]

        code, out, err = await run_cli(
            gw.url,
            "hello there\n\nhow are you\n",
            "chat",
            ADAPTER,
            "--system",
            "Be brief.",
            *common,
        )
        assert code == 0, err
        history: list[ChatCompletionMessageParam] = [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hello there"},
        ]
        first = await sdk_chat(gw, history)
        history += [
            {"role": "assistant", "content": first},
            {"role": "user", "content": "how are you"},
        ]
        second = await sdk_chat(gw, history)  # the answer to the whole conversation
        assert out == f"{first}\n{second}\n"

        code, out, err = await run_cli(
            gw.url, "The quick brown fox\n/exit\nnot sent\n", "complete", TINY_SERVED_NAME, *common
        )
        assert code == 0, err
        expected = await gw.complete(
            TINY_SERVED_NAME, max_tokens=MAX_TOKENS, prompt="The quick brown fox"
        )
        assert out == f"{expected}\n"

        # An unknown model: the gateway's error, printed; the exit code says it failed.
        code, out, err = await run_cli(gw.url, "hi\n", "chat", "no-such-adapter", *common)
        assert code == 1 and out == ""
        assert "no-such-adapter" in err and "HTTP 404" in err

        code, out, err = await run_cli(gw.url, "", "status")
        assert code == 0, err
        assert "ready" in out.splitlines()[0] and "1 of 1 adapter(s) loaded" in out
        assert any(ADAPTER in line and "loaded" in line for line in out.splitlines())
        engine_row = next(line for line in out.splitlines() if vllm_engine.name in line)
        assert f"pid {vllm_engine.pid}" in engine_row or str(vllm_engine.pid) in engine_row
