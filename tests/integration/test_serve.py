"""``lora-gateway serve`` end to end, as an operator runs it: default base model (SmolLM2),
its own vLLM child, the printed URL and OpenAI SDK example (run as printed), SIGTERM ends the
whole process tree. Starts its own vLLM (the product's default model, not the shared tiny one).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.integration

READY_TIMEOUT_S = 420.0


def _find(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in serve's output:\n{text}"
    return match[1]


def _read(path: Path) -> str:
    return path.read_text()


async def _read_until(
    stream: asyncio.StreamReader, marker: str, timeout_s: float, seen: list[str]
) -> None:
    deadline = time.monotonic() + timeout_s
    while not seen or marker not in seen[-1]:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {marker!r} within {timeout_s} s; output:\n" + "".join(seen)
        line = await asyncio.wait_for(stream.readline(), remaining)
        assert line, "serve exited early; output:\n" + "".join(seen)
        seen.append(line.decode())


async def test_serve_prints_a_working_sdk_example_and_stops_cleanly(
    smollm2_model_dir: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    (data_dir / "models").mkdir(parents=True)
    # The default base model, already prepared (cached by the smollm2_model_dir fixture).
    (data_dir / "models" / "smollm2-135m-instruct").symlink_to(smollm2_model_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORA_GATEWAY_")}
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "lora-gateway"),
        "serve",
        "--port",
        "0",
        "--data-dir",
        str(data_dir),
        "--api-key",
        "test-key-123",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    assert process.stdout is not None
    seen: list[str] = []
    engine_pid: int | None = None
    try:
        await _read_until(
            process.stdout, "print(reply.choices[0].message.content)", READY_TIMEOUT_S, seen
        )
        output = "".join(seen)
        engine_pid = int(_find(r"engine engine-0: \w+ \(pid (\d+)", output))
        url = _find(r"gateway: (http://\S+)", output)
        assert "vllm.entrypoints.openai.api_server" in _read(Path(_find(r"log: (\S+)", output)))

        example = output[output.index("from openai import OpenAI") :]
        assert f'base_url="{url}/v1"' in example and 'api_key="test-key-123"' in example
        run = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", example],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip()

        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            headers = {"Authorization": "Bearer test-key-123"}
            models = (await client.get("/v1/models", headers=headers)).json()
            assert [m["id"] for m in models["data"]] == ["smollm2-135m-instruct"]
            reply = await client.post(
                "/v1/chat/completions",
                headers=headers,
                json={
                    "model": "smollm2-135m-instruct",
                    "temperature": 0,
                    "max_tokens": 16,
                    "messages": [{"role": "user", "content": "What is the capital of France?"}],
                },
            )
            assert "Paris" in reply.json()["choices"][0]["message"]["content"]
            assert (await client.get("/readyz")).status_code == 200
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        returncode = await asyncio.wait_for(process.wait(), 60)
    assert returncode in (0, -signal.SIGTERM)
    assert engine_pid is not None
    deadline = time.monotonic() + 10
    while True:
        try:
            os.killpg(engine_pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "vLLM outlived the gateway"
        await asyncio.sleep(0.1)
