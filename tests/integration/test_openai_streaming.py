"""Streaming through the gateway against the session's real vLLM: the same events as a direct
request (chunks in = chunks out, whether or not the client asked for usage, and the tokens are
counted either way), and a client that leaves (mid-stream, or while waiting for a non-streamed
answer) stops the generation on the engine."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.engines.managed import ManagedVLLMEngine
from gateway.inference.streaming import SSEEventSplitter
from gateway.lifecycle.service import AdapterLifecycle
from gateway.settings import GatewaySettings
from tests.integration.conftest import TINY_SERVED_NAME
from tests.support.gateway_server import serve_in_loop, with_adapters_dir

pytestmark = pytest.mark.integration

BASE = TINY_SERVED_NAME
ADAPTER = "st-a1"
RUNNING = re.compile(r"^vllm:num_requests_running\{[^}]*\} ([0-9.e+]+)$", re.MULTILINE)
GENERATED = re.compile(r"^vllm:generation_tokens_total\{[^}]*\} ([0-9.e+]+)$", re.MULTILINE)
MAX_TOKENS = 1900


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateway(
    vllm_engine: ManagedVLLMEngine,
    tiny_adapters: dict[str, Path],
    engine_settings: GatewaySettings,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[httpx.AsyncClient, AdapterLifecycle]]:
    """The gateway around the session engine object itself, served from this loop; its own
    lifecycle registers ``ADAPTER`` from ``--adapters-dir`` and it is loaded before the tests."""
    settings = engine_settings.model_copy(update={"data_dir": tmp_path_factory.mktemp("gw")})
    app = create_app(
        with_adapters_dir(settings, {ADAPTER: tiny_adapters["a1"]}), engines=[vllm_engine]
    )
    async with serve_in_loop(app) as url, httpx.AsyncClient(base_url=url, timeout=120) as http:
        lifecycle: AdapterLifecycle = app.state.lifecycle
        await lifecycle.load(ADAPTER)
        yield http, lifecycle


def leases(lifecycle: AdapterLifecycle) -> int:
    return lifecycle.view(ADAPTER).active.leases


async def sse_events(response: httpx.Response) -> list[dict[str, Any] | str]:
    splitter, events = SSEEventSplitter(), []
    async for chunk in response.aiter_raw():
        events.extend(splitter.feed(chunk))
    assert splitter.flush() == b""
    decoded: list[dict[str, Any] | str] = []
    for event in events:
        assert event.startswith(b"data: ") and event.endswith(b"\n\n")
        data = event[6:-2]
        decoded.append(data.decode() if data == b"[DONE]" else json.loads(data))
    return decoded


def transcript(events: list[dict[str, Any] | str]) -> tuple[str, list[str], object, object]:
    """What a client reads from a stream: the text, the finish reasons, the usage, the end."""
    text: list[str] = []
    finish: list[str] = []
    usage: object = None
    for event in events:
        if isinstance(event, str):
            continue
        for choice in event["choices"]:
            text.append(choice.get("text") or (choice.get("delta") or {}).get("content") or "")
            if choice.get("finish_reason"):
                finish.append(choice["finish_reason"])
        if event.get("usage"):
            usage = event["usage"]
    return "".join(text), finish, usage, events[-1]


async def token_counts(http: httpx.AsyncClient, model: str) -> tuple[float, float]:
    """(prompt, completion) tokens the gateway's own /metrics counted for ``model``."""
    labels = {"model": model, "adapter": "base" if model == BASE else model}
    text = (await http.get("/metrics")).text
    counts = {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.labels == labels
    }
    return (
        counts.get("lora_gateway_prompt_tokens_total", 0.0),
        counts.get("lora_gateway_completion_tokens_total", 0.0),
    )


async def direct_events(
    engine: ManagedVLLMEngine, path: str, request: dict[str, Any]
) -> list[dict[str, Any] | str]:
    async with httpx.AsyncClient(
        base_url=engine.url,
        headers={"Authorization": f"Bearer {engine.api_key}"},
        timeout=120,
    ) as direct_http:
        async with direct_http.stream("POST", path, json=request) as direct:
            assert direct.status_code == 200
            return await sse_events(direct)


@pytest.mark.parametrize("client_asks_usage", [True, False], ids=["usage", "no-usage"])
@pytest.mark.parametrize(
    ("path", "model", "body"),
    [
        ("/v1/chat/completions", BASE, {"messages": [{"role": "user", "content": "Once upon"}]}),
        ("/v1/completions", ADAPTER, {"prompt": "Once upon a time"}),
    ],
)
async def test_gateway_stream_has_the_engines_events(
    gateway: tuple[httpx.AsyncClient, AdapterLifecycle],
    vllm_engine: ManagedVLLMEngine,
    path: str,
    model: str,
    body: dict[str, Any],
    client_asks_usage: bool,
) -> None:
    """Chunks in = chunks out, counting only events meant for the client: the gateway always
    asks the engine for usage (to count tokens) and drops that chunk when the client did not
    ask for it, so the client sees exactly what vLLM would have sent it."""
    http, lifecycle = gateway
    request = {**body, "stream": True, "temperature": 0.0, "max_tokens": 32}
    if client_asks_usage:
        request["stream_options"] = {"include_usage": True}
    adapter_upstream = lifecycle.view(ADAPTER).active.version.upstream_name
    upstream_model = adapter_upstream if model == ADAPTER else BASE
    expected = await direct_events(vllm_engine, path, {**request, "model": upstream_model})
    with_usage = await direct_events(
        vllm_engine,
        path,
        {**request, "model": upstream_model, "stream_options": {"include_usage": True}},
    )
    usage = with_usage[-2]
    assert isinstance(usage, dict) and usage["choices"] == []

    before = await token_counts(http, model)
    async with http.stream("POST", path, json={**request, "model": model}) as via:
        assert via.status_code == 200
        received = await sse_events(via)
    assert len(received) > 3 and len(expected) > 3
    assert received[-1] == "[DONE]"
    # vLLM merges deltas a slow reader has not taken yet, so how many chunks carry the text
    # depends on timing (a loaded machine gives fewer, bigger ones, direct or not). What the
    # client reads must be the same: text, finish reasons, usage. One upstream event in, one
    # event out is checked exactly against the fake upstream (tests/gateway/inference).
    assert transcript(received) == transcript(expected)
    assert all(e["model"] == model for e in received if isinstance(e, dict))
    has_usage_chunk = any(isinstance(e, dict) and "usage" in e for e in received)
    assert has_usage_chunk is client_asks_usage

    # Counted either way, from the engine's usage chunk (once the request's record closed).
    wanted = (usage["usage"]["prompt_tokens"], usage["usage"]["completion_tokens"])
    for _ in range(50):
        after = await token_counts(http, model)
        counted = (after[0] - before[0], after[1] - before[1])
        if counted == wanted:
            break
        await asyncio.sleep(0.05)
    assert counted == wanted


async def engine_metric(engine: ManagedVLLMEngine, family: re.Pattern[str]) -> float:
    text = await engine.client.metrics_text()
    values = family.findall(text)
    assert values, f"no {family.pattern} in the engine's /metrics"
    return sum(float(value) for value in values)


async def test_client_disconnect_stops_generation(
    gateway: tuple[httpx.AsyncClient, AdapterLifecycle], vllm_engine: ManagedVLLMEngine
) -> None:
    http, adapters = gateway
    body = {
        "model": ADAPTER,
        "prompt": "Once upon a time",
        "stream": True,
        "max_tokens": MAX_TOKENS,
        "ignore_eos": True,
        "temperature": 0.0,
    }
    assert await engine_metric(vllm_engine, RUNNING) == 0
    generated_before = await engine_metric(vllm_engine, GENERATED)
    async with http.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        chunks = response.aiter_raw()
        splitter, received = SSEEventSplitter(), 0
        while received < 5:
            received += len(splitter.feed(await anext(chunks)))
        assert await engine_metric(vllm_engine, RUNNING) == 1
        assert leases(adapters) == 1
    left = time.monotonic()  # the client's connection is closed here, mid-stream
    while await engine_metric(vllm_engine, RUNNING) > 0:
        assert time.monotonic() - left < 5, "the engine kept generating after the client left"
        await asyncio.sleep(0.05)
    assert leases(adapters) == 0
    await asyncio.sleep(0.5)  # let the counters of the aborted request settle
    generated = await engine_metric(vllm_engine, GENERATED) - generated_before
    # ignore_eos: a request left running would have produced all MAX_TOKENS tokens.
    assert generated < MAX_TOKENS / 2, f"{generated} tokens generated after the client left"


async def test_client_leaving_a_non_stream_request_stops_generation(
    gateway: tuple[httpx.AsyncClient, AdapterLifecycle], vllm_engine: ManagedVLLMEngine
) -> None:
    """The client leaves as soon as the engine is generating (no client timeout: see
    :func:`wait_until_running`); a generation left running would produce all MAX_TOKENS."""
    http, adapters = gateway
    body = {
        "model": ADAPTER,
        "prompt": "Once upon a time",
        "max_tokens": MAX_TOKENS,
        "ignore_eos": True,
        "temperature": 0.0,
    }
    assert await engine_metric(vllm_engine, RUNNING) == 0
    generated_before = await engine_metric(vllm_engine, GENERATED)
    request = asyncio.create_task(http.post("/v1/completions", json=body))
    await wait_until_running(vllm_engine, request)
    assert leases(adapters) == 1
    request.cancel()  # httpx drops the connection: the client left
    with pytest.raises(asyncio.CancelledError):
        await request
    left = time.monotonic()
    while await engine_metric(vllm_engine, RUNNING) > 0:
        assert time.monotonic() - left < 5, "the engine kept generating after the client left"
        await asyncio.sleep(0.05)
    assert leases(adapters) == 0
    await asyncio.sleep(0.5)  # let the counters of the aborted request settle
    generated = await engine_metric(vllm_engine, GENERATED) - generated_before
    assert generated < MAX_TOKENS / 2, f"{generated} tokens generated after the client left"


async def wait_until_running(engine: ManagedVLLMEngine, request: asyncio.Task[Any]) -> None:
    """Poll the engine back to back (no sleep) until it runs ``request``.

    Not a client timeout, nor a sleep: on a small CPU box that vLLM saturates, a timer of this
    process can fire only seconds late (a 0.5 s sleep was measured taking 5 to 9 s on 2 cores
    while vLLM generated), often after the whole generation is over, so a client "leaving after
    1 s" would leave after the answer. Each poll here wakes on the engine's reply instead.
    """
    while await engine_metric(engine, RUNNING) == 0:
        if request.done():
            pytest.fail(f"the request ended before the engine ran it: {request.result()!r}")
