"""The app's own ``/metrics`` in front of a FAKE upstream (fault injection): stream usage asked
for and stripped again, and engine failures counted by kind.

Each test makes its own gateway, so counters start at zero. The fake answers a stream like
vLLM: a final ``"choices":[]`` usage chunk only when ``stream_options.include_usage`` is set.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from gateway.engines.base import EngineState
from gateway.inference.streaming import SSEEventSplitter
from loadtest.fake_vllm import DONE, Recorded, Reply, Stream, chunk_event, json_reply
from tests.gateway.conftest import Gateway, GatewayFactory
from tests.gateway.openai_env import ADAPTER, chat
from tests.support.gateway_server import unused_url


async def scrape(gw: Gateway) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = await gw.http.get("/metrics")
    assert response.status_code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def events_of(gw: Gateway, body: dict[str, Any]) -> list[Any]:
    async with gw.http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        splitter, events = SSEEventSplitter(), []
        async for chunk in response.aiter_raw():
            events.extend(splitter.feed(chunk))
    return [event[6:-2].decode() if event == DONE else json.loads(event[6:-2]) for event in events]


def choice(delta: dict[str, str], finish: str | None = None) -> dict[str, Any]:
    """One streamed choice as the fake vLLM writes it."""
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}


async def test_stream_usage_is_asked_for_counted_and_stripped(
    make_gateway: GatewayFactory,
) -> None:
    async with make_gateway() as gw:
        events = await events_of(gw, chat(ADAPTER, stream=True))
        sent = gw.fake.requests[-1].json()
        assert sent["stream_options"] == {"include_usage": True}  # asked by the gateway...
        assert [e if e == "[DONE]" else e["choices"] for e in events] == [  # ...not shown
            [choice({"role": "assistant", "content": ""})],
            [choice({"content": " w0"})],
            [choice({"content": " w1"}, "length")],
            "[DONE]",
        ]
        assert all("usage" not in e for e in events if e != "[DONE]")

        asked = await events_of(
            gw, chat(ADAPTER, stream=True, stream_options={"include_usage": True})
        )
        assert asked[-2]["choices"] == [] and asked[-2]["usage"]["prompt_tokens"] == 1
        assert asked[-2]["model"] == ADAPTER  # renamed like every other event

        samples = await scrape(gw)
        labels = {"model": ADAPTER, "adapter": ADAPTER}
        assert value(samples, "lora_gateway_prompt_tokens_total", **labels) == 2
        assert value(samples, "lora_gateway_completion_tokens_total", **labels) == 4
        assert value(samples, "lora_gateway_time_to_first_token_seconds_count", **labels) == 2
        assert value(samples, "lora_gateway_inter_token_latency_seconds_count", **labels) == 2


async def test_engine_failures_are_counted_by_kind(make_gateway: GatewayFactory) -> None:
    async with make_gateway(read_timeout_s=0.5) as gw:

        async def answer(recorded: Recorded) -> Reply:
            body = recorded.json()
            if body.get("stream"):  # breaks after its first event
                return Stream([chunk_event(body["model"], "x")], fail_at_end=True)
            if body["messages"][0]["content"] == "slow":
                await asyncio.sleep(1)
            return json_reply({"error": {"message": "boom", "type": "x"}}, 500)

        gw.fake.handler = answer
        assert (await gw.http.post("/v1/chat/completions", json=chat())).status_code == 500
        broken = await gw.http.post("/v1/chat/completions", json=chat(stream=True))
        assert broken.status_code == 200 and b'"error"' in broken.content
        slow = chat(messages=[{"role": "user", "content": "slow"}])
        assert (await gw.http.post("/v1/chat/completions", json=slow)).status_code == 504
        gw.engine.state = EngineState.DOWN  # no ready engine: the gateway's 503
        assert (await gw.http.post("/v1/chat/completions", json=chat())).status_code == 503
        gw.engine.state = EngineState.READY
        gw.engine._url = unused_url()
        await gw.engine.close_client()
        assert (await gw.http.post("/v1/chat/completions", json=chat())).status_code == 503
        assert (await gw.http.post("/v1/chat/completions", json=chat("nope"))).status_code == 404

        samples = await scrape(gw)
        kinds = {
            kind: value(samples, "lora_gateway_upstream_errors_total", kind=kind)
            for kind in ("http_5xx", "stream_broken", "timeout", "unavailable", "http_4xx")
        }
        # The gateway's own 404 is no engine failure; "no engine ready" and "unreachable"
        # are both the engine being unavailable.
        assert kinds == {
            "http_5xx": 1,
            "stream_broken": 1,
            "timeout": 1,
            "unavailable": 2,
            "http_4xx": 0,
        }


async def test_metrics_needs_no_api_key(make_gateway: GatewayFactory) -> None:
    async with make_gateway(api_keys=["k-1"]) as gw:
        assert (await gw.http.get("/v1/models")).status_code == 401
        response = await gw.http.get("/metrics")
        assert response.status_code == 200 and "lora_gateway_requests_total" in response.text
