"""Micro-benchmark: what the metrics add to one request on the hot path.

Budget: the whole gateway overhead target is < 1.5 ms p50; the metrics must stay a small part
of it. The bounds below are ~10x what a quiet 2-core machine measures, so that a loaded CI
machine passes while a regression (label resolution per token, a lock per event) fails.
Run with ``-s`` to see the figures.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections.abc import Callable

from gateway.inference.record import RequestInfo
from gateway.inference.usage import usage_chunk
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.request_metrics import RequestMetricsObserver

CHAT = "/v1/chat/completions"
CONTENT_EVENT = (
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"legal",'
    b'"choices":[{"index":0,"delta":{"content":"word"},"logprobs":null,"finish_reason":null}]}'
    b"\n\n"
)
USAGE_EVENT = (
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"legal",'
    b'"choices":[],"usage":{"prompt_tokens":18,"total_tokens":82,"completion_tokens":64}}\n\n'
)


def per_call_us(fn: Callable[[], None], rounds: int = 7, calls: int = 2000) -> float:
    """Median over rounds of the mean CPU time per call, in microseconds (this thread's CPU
    time, not the wall clock: other processes on a busy machine do not count)."""
    results = []
    for _ in range(rounds):
        started = time.thread_time()
        for _ in range(calls):
            fn()
        results.append((time.thread_time() - started) / calls * 1e6)
    return statistics.median(results)


def make_metrics() -> GatewayMetrics:
    names = {f"adapter-{i}": "/x" for i in range(100)}
    names["legal"] = "/x"
    return GatewayMetrics(registered_adapters=names.keys, process_metrics=False)


def test_per_request_cost_of_the_metrics() -> None:
    observer = RequestMetricsObserver(make_metrics())

    def request(stream_events: int) -> None:
        info = RequestInfo(request_id="r", method="POST", path=CHAT, started=time.perf_counter())
        observer.request_started(info)
        info.model = "legal"
        for _ in range(stream_events):
            observer.stream_event(info, CONTENT_EVENT)
        if stream_events:
            observer.stream_event(info, USAGE_EVENT)
        info.status, info.prompt_tokens, info.completion_tokens = 200, 18, 64
        info.finished = time.perf_counter()
        observer.request_finished(info)

    # The RequestInfo is the middleware's cost, not ours: measure it to subtract it.
    def make_info() -> None:
        RequestInfo("r", "POST", CHAT, 0.0)

    def scan() -> None:
        usage_chunk(CONTENT_EVENT)

    info_us = per_call_us(make_info)
    request_us = per_call_us(lambda: request(0)) - info_us
    stream_us = per_call_us(lambda: request(64), calls=200) - info_us
    scan_us = per_call_us(scan)
    print(
        f"\nmetrics per non-streaming request: {request_us:.1f} us; per 64-token stream: "
        f"{stream_us:.1f} us ({stream_us / 64:.2f} us/token); usage scan per content event: "
        f"{scan_us:.2f} us"
    )
    assert request_us < 100
    assert stream_us < 1500
    assert scan_us < 5


def active_metrics(adapters: int) -> GatewayMetrics:
    """Metrics after one streamed request to each of ``adapters`` adapters."""
    metrics = make_metrics()
    observer = RequestMetricsObserver(metrics)
    for i in range(adapters):
        info = RequestInfo("r", "POST", CHAT, time.perf_counter())
        observer.request_started(info)
        info.model, info.status = f"adapter-{i}", 200
        observer.stream_event(info, CONTENT_EVENT)
        observer.stream_event(info, CONTENT_EVENT)
        observer.request_finished(info)
    return metrics


def test_scrape_render_cost() -> None:
    """Rendering grows with the adapters that had traffic (about 58 series each)."""
    for adapters in (10, 100):
        metrics = active_metrics(adapters)

        def render(metrics: GatewayMetrics = metrics) -> None:
            metrics.render()

        render_ms = per_call_us(render, rounds=3, calls=3) / 1000
        print(f"\nrender with {adapters} active adapters: {render_ms:.1f} ms")
        assert render_ms < 5 * adapters


async def test_a_scrape_renders_off_the_event_loop() -> None:
    """``GET /metrics`` renders in a worker thread: the loop keeps serving meanwhile."""
    metrics = active_metrics(100)
    started = time.perf_counter()
    expected = metrics.render()
    render_ms = (time.perf_counter() - started) * 1000
    ticks: list[float] = []
    scraping = True

    async def ticker() -> None:
        while scraping:
            await asyncio.sleep(0.001)
            ticks.append(time.perf_counter())

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    ticks.clear()
    started = time.perf_counter()
    body = await metrics.scrape()
    scrape_ms = (time.perf_counter() - started) * 1000
    scraping = False
    await task
    gaps = [later - earlier for earlier, later in itertools.pairwise(ticks)]
    longest_ms = max(gaps, default=scrape_ms / 1000) * 1000
    print(
        f"\nrender on the loop: {render_ms:.1f} ms; scrape in a thread: {scrape_ms:.1f} ms, "
        f"{len(ticks)} loop ticks meanwhile, longest loop stall {longest_ms:.1f} ms"
    )
    assert len(body) > 0.9 * len(expected) and b"lora_gateway_requests_total" in body
    # Blocked, the loop would not tick at all until the render ended.
    assert len(ticks) >= 3
