"""Server-Timing on every proxied answer, the same figures in the access log and the metrics.

In-process gateway over the fake vLLM (tests/gateway/conftest.py). The fake holds
its answer for a known time, so the ``upstream`` figure must cover it and ``gw-pre`` must not.
"""

from __future__ import annotations

import asyncio
import logging
import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.inference.record import RequestInfo
from gateway.observability.server_timing import server_timing_header
from loadtest.fake_vllm import (
    DONE,
    Recorded,
    Reply,
    Stream,
    chunk_event,
    completion_body,
    json_reply,
)
from tests.gateway.conftest import Gateway
from tests.gateway.openai_env import ADAPTER, BASE, access_lines, chat

HOLD_S = 0.15
_METRIC = re.compile(r"([a-z-]+);dur=([0-9.]+)")


def timings(header: str) -> dict[str, float]:
    return {name: float(dur) for name, dur in _METRIC.findall(header)}


def overhead_counts(text: str) -> dict[str, float]:
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "lora_gateway_overhead_seconds":
            for sample in family.samples:
                if sample.name.endswith("_count"):
                    counts[sample.labels["phase"]] = sample.value
    return counts


async def test_full_answer_has_server_timing_and_the_log_has_all_phases(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    async def slow(recorded: Recorded) -> Reply | None:
        if not recorded.path.endswith("completions"):
            return None
        await asyncio.sleep(HOLD_S)
        return json_reply(completion_body(recorded.json()["model"]))

    gateway.fake.handler = slow
    before = overhead_counts((await gateway.http.get("/metrics")).text)
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        response = await gateway.http.post(
            "/v1/chat/completions", json=chat(ADAPTER), headers={"x-request-id": "st-1"}
        )
        (line,) = await access_lines(caplog, "st-1")
    assert response.status_code == 200
    figures = timings(response.headers["server-timing"])
    assert set(figures) == {"gw-pre", "upstream"}
    assert figures["upstream"] >= HOLD_S * 1000
    assert figures["gw-pre"] < HOLD_S * 1000
    assert line["gw_pre_ms"] == pytest.approx(figures["gw-pre"], abs=0.002)
    assert line["upstream_ttfb_ms"] == pytest.approx(figures["upstream"], abs=0.002)
    assert line["upstream_ms"] >= line["upstream_ttfb_ms"]
    assert 0 <= line["gw_post_ms"] < HOLD_S * 1000
    total = line["gw_pre_ms"] + line["upstream_ms"] + line["gw_post_ms"]
    assert total == pytest.approx(line["latency_ms"], abs=0.01)
    after = overhead_counts((await gateway.http.get("/metrics")).text)
    assert after["pre"] == before.get("pre", 0) + 1
    assert after["post"] == before.get("post", 0) + 1


async def test_streamed_answer_has_server_timing_before_its_body(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    release = asyncio.Event()

    async def slow_stream(recorded: Recorded) -> Reply | None:
        if not recorded.path.endswith("completions"):
            return None
        await asyncio.sleep(HOLD_S)
        model = recorded.json()["model"]
        return Stream([chunk_event(model, "a"), release, chunk_event(model, "b"), DONE])

    gateway.fake.handler = slow_stream
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        async with gateway.http.stream(
            "POST",
            "/v1/chat/completions",
            json=chat(BASE, stream=True),
            headers={"x-request-id": "st-2"},
        ) as response:
            # The header is there while the engine still holds the rest of the stream.
            figures = timings(response.headers["server-timing"])
            release.set()
            body = b"".join([chunk async for chunk in response.aiter_bytes()])
        (line,) = await access_lines(caplog, "st-2")
    assert b"[DONE]" in body
    assert figures["upstream"] >= HOLD_S * 1000 and figures["gw-pre"] < HOLD_S * 1000
    assert line["upstream_ttfb_ms"] == pytest.approx(figures["upstream"], abs=0.002)
    assert line["upstream_ms"] > line["upstream_ttfb_ms"]
    assert line["gw_post_ms"] is not None and line["gw_post_ms"] >= 0


async def test_answers_made_without_the_engine_have_no_server_timing(gateway: Gateway) -> None:
    unknown = await gateway.http.post("/v1/chat/completions", json=chat("no-such-model"))
    assert unknown.status_code == 404
    assert "server-timing" not in unknown.headers
    assert "server-timing" not in (await gateway.http.get("/v1/models")).headers


def test_header_format_is_milliseconds_with_three_decimals() -> None:
    info = RequestInfo(request_id="r", method="POST", path="/v1/completions", started=10.0)
    assert server_timing_header(info) is None
    info.upstream_sent = 10.00125
    assert server_timing_header(info) is None
    info.upstream_first_byte = 10.5
    assert server_timing_header(info) == (
        b"server-timing",
        b"gw-pre;dur=1.250, upstream;dur=498.750",
    )
