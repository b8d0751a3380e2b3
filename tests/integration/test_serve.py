"""``lora-gateway serve`` end to end, as an operator runs it: default base model (SmolLM2),
its own vLLM child, the printed URL, admin-token location and OpenAI SDK example (run as
printed), one JSON log line per request, and SIGTERM: the gateway stops accepting, the stream
in flight finishes, then the engine's whole process tree ends. Starts its own vLLM (the
product's default model, not the shared tiny one): one engine start for all of this.
"""

from __future__ import annotations

import asyncio
import json
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
#: Long enough that the stream is still running when the gateway is told to stop.
DRAIN_STREAM_TOKENS = 256


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
    # The drain must outlast the 256-token stream even on a busy machine (the default 30 s
    # bound is what cuts it off otherwise); what is tested is that it drains, not how fast.
    env["LORA_GATEWAY_DRAIN_TIMEOUT_S"] = "600"
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
        ready_line = r"engine engine-0: (?:engine ready|adapters re-applied) \(pid (\d+)\)"
        engine_pid = int(_find(ready_line, output))
        assert "engine engine-0: adapters re-applied" in output
        url = _find(r"gateway: (http://\S+)", output)
        assert "vllm.entrypoints.openai.api_server" in _read(Path(_find(r"log: (\S+)", output)))

        example = output[output.index("from openai import OpenAI") :]
        assert f'base_url="{url}/v1"' in example and "test-key-123" not in output
        run = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", example],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "OPENAI_API_KEY": "test-key-123"},
        )
        assert run.returncode == 0, run.stderr
        # As printed (greedy: see gateway.commands.serve.sdk_example for why).
        assert "Paris" in run.stdout, run.stdout

        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            headers = {"Authorization": "Bearer test-key-123"}
            models = (await client.get("/v1/models", headers=headers)).json()
            assert [m["id"] for m in models["data"]] == ["smollm2-135m-instruct"]
            reply = await client.post(
                "/v1/chat/completions",
                headers={**headers, "x-request-id": "serve-test-paris"},
                json={
                    "model": "smollm2-135m-instruct",
                    "temperature": 0,
                    "max_tokens": 16,
                    "messages": [{"role": "user", "content": "What is the capital of France?"}],
                },
            )
            assert "Paris" in reply.json()["choices"][0]["message"]["content"]
            assert (await client.get("/readyz")).status_code == 200
            assert engine_pid is not None
            events, refused = await _stream_across_sigterm(client, headers, process, engine_pid)
        assert events > 3
        assert refused, "the gateway kept accepting connections after SIGTERM"
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(process.stdout.read(), 60)
        returncode = await asyncio.wait_for(process.wait(), 60)
    output = "".join(seen) + rest.decode()
    assert returncode in (0, -signal.SIGTERM), output
    assert engine_pid is not None
    deadline = time.monotonic() + 10
    while True:
        try:
            os.killpg(engine_pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "vLLM outlived the gateway"
        await asyncio.sleep(0.1)

    # Where the admin token is, never the token itself.
    token_file = data_dir / "admin_token"
    assert f"bearer token in {token_file}" in output
    assert token_file.read_text().strip() not in output
    # One JSON line per request, from the gateway's access log; uvicorn's own is off.
    requests = [
        line
        for line in map(_json_or_none, output.splitlines())
        if line and line.get("event") == "request"
    ]
    paris = [line for line in requests if line["request_id"] == "serve-test-paris"]
    assert len(paris) == 1 and paris[0]["status"] == 200 and paris[0]["completion_tokens"]
    # The stream sent across SIGTERM ran to its end (tokens from the engine's usage chunk,
    # which the gateway asked for and the client never saw).
    streamed = [line for line in requests if line["stream"]]
    assert len(streamed) == 1 and streamed[0]["status"] == 200
    assert streamed[0]["completion_tokens"] == DRAIN_STREAM_TOKENS and not streamed[0]["error"]
    assert 'HTTP/1.1" 200' not in output
    # Readiness polls are left out of the access log at INFO (the default level).
    assert not [line for line in requests if line["path"] in ("/readyz", "/healthz")]


def _json_or_none(line: str) -> dict[str, object] | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


async def _stream_across_sigterm(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    process: asyncio.subprocess.Process,
    engine_pid: int,
) -> tuple[int, bool]:
    """Start a long stream, SIGTERM the gateway mid-stream, check that new connections are
    refused while the stream goes on to its end; returns (events received, refused seen)."""
    body = {
        "model": "smollm2-135m-instruct",
        "prompt": "Once upon a time",
        "max_tokens": DRAIN_STREAM_TOKENS,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
    }
    tokens, refused, done = 0, False, False
    async with client.stream("POST", "/v1/completions", headers=headers, json=body) as response:
        assert response.status_code == 200
        lines = response.aiter_lines()
        async for line in lines:
            if line.startswith("data: {"):
                tokens += 1
                if tokens == 3:
                    break
        process.send_signal(signal.SIGTERM)
        # Stop accepting: a new connection is refused within moments (the listening socket
        # closes) while the stream above is still being generated.
        deadline = time.monotonic() + 5
        while not refused and time.monotonic() < deadline:
            try:
                async with httpx.AsyncClient(base_url=str(client.base_url), timeout=2) as fresh:
                    await fresh.get("/healthz")
            except (httpx.ConnectError, httpx.RemoteProtocolError):
                # Refused, or accepted in the instant the listener closed and then dropped
                # without an answer: either way the new request is not served.
                refused = True
            else:
                await asyncio.sleep(0.05)
        os.killpg(engine_pid, 0)  # the engine still runs: it is stopped last
        async for line in lines:
            if line.startswith("data: {"):
                assert '"error"' not in line, line
                tokens += 1
            elif line == "data: [DONE]":
                done = True
    assert done, "the stream ended without [DONE]"
    return tokens, refused
