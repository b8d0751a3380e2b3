"""RequestMetricsObserver: what one request adds to the metrics, fed as the middleware does.

Stream events are real vLLM 0.32 SSE events (tests/gateway/fixtures), in the order the engine
sent them.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.inference.record import RequestInfo
from gateway.observability.metrics import BASE, OTHER, GatewayMetrics
from gateway.observability.request_metrics import (
    MAX_TRACKED,
    RequestMetricsObserver,
    is_token_event,
)
from tests.support.gateway_server import StaticEngine

FIXTURES = Path(__file__).parents[1] / "fixtures"
CHAT = "/v1/chat/completions"


def sse_events(name: str) -> list[bytes]:
    raw = (FIXTURES / name).read_bytes()
    return [event + b"\n\n" for event in raw.split(b"\n\n") if event.strip()]


@pytest.fixture
def registered() -> dict[str, str]:
    return {"legal": "/adapters/legal", "medical": "/adapters/medical"}


@pytest.fixture
def metrics(registered: dict[str, str]) -> GatewayMetrics:
    return GatewayMetrics(
        engines=[StaticEngine("http://127.0.0.1:9", "tiny")],
        registered_adapters=registered.keys,
        process_metrics=False,
    )


@pytest.fixture
def observer(metrics: GatewayMetrics) -> RequestMetricsObserver:
    return RequestMetricsObserver(metrics)


def serve_one(
    observer: RequestMetricsObserver,
    model: str | None,
    *,
    status: int = 200,
    events: list[bytes] | None = None,
    usage: tuple[int, int] | None = None,
    path: str = CHAT,
    disconnected: bool = False,
) -> RequestInfo:
    """One request through the observer, in the middleware's and proxy's order."""
    info = RequestInfo(request_id="req", method="POST", path=path, started=time.perf_counter())
    observer.request_started(info)
    info.model = model
    info.status = status
    for event in events or []:
        observer.stream_event(info, event)
    if usage is not None:
        info.prompt_tokens, info.completion_tokens = usage
    info.client_disconnected = disconnected
    info.finished = time.perf_counter()
    observer.request_finished(info)
    return info


def value(metrics: GatewayMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_streamed_chat_records_ttft_inter_token_usage_and_status(
    metrics: GatewayMetrics, observer: RequestMetricsObserver
) -> None:
    # Role chunk, 5 tokens, usage chunk, [DONE]: 5 token events.
    events = sse_events("vllm-0.32-chat-stream-usage.sse")
    assert [is_token_event(e) for e in events].count(True) == 5
    serve_one(observer, "legal", events=events, usage=(18, 5))

    labels = {"model": "legal", "adapter": "legal"}
    assert value(metrics, "lora_gateway_requests_total", status_code="200", **labels) == 1
    assert value(metrics, "lora_gateway_time_to_first_token_seconds_count", **labels) == 1
    assert value(metrics, "lora_gateway_inter_token_latency_seconds_count", **labels) == 4
    assert value(metrics, "lora_gateway_request_duration_seconds_count", **labels) == 1
    assert value(metrics, "lora_gateway_prompt_tokens_total", **labels) == 18
    assert value(metrics, "lora_gateway_completion_tokens_total", **labels) == 5
    assert value(metrics, "lora_gateway_in_flight_requests") == 0
    e2e = value(metrics, "lora_gateway_request_duration_seconds_sum", **labels)
    itl = value(metrics, "lora_gateway_inter_token_latency_seconds_sum", **labels)
    assert e2e is not None and itl is not None and e2e >= itl


def test_streamed_completion_counts_every_token_event(
    metrics: GatewayMetrics, observer: RequestMetricsObserver
) -> None:
    serve_one(
        observer, "tiny", events=sse_events("vllm-0.32-completion-stream-usage.sse"), usage=(2, 4)
    )
    base = {"model": "tiny", "adapter": BASE}
    assert value(metrics, "lora_gateway_time_to_first_token_seconds_count", **base) == 1
    assert value(metrics, "lora_gateway_inter_token_latency_seconds_count", **base) == 3
    assert value(metrics, "lora_gateway_completion_tokens_total", **base) == 4


def test_non_streaming_request_has_no_token_timings(
    metrics: GatewayMetrics, observer: RequestMetricsObserver
) -> None:
    serve_one(observer, "medical", usage=(7, 9))
    labels = {"model": "medical", "adapter": "medical"}
    assert value(metrics, "lora_gateway_requests_total", status_code="200", **labels) == 1
    assert value(metrics, "lora_gateway_time_to_first_token_seconds_count", **labels) == 0
    assert value(metrics, "lora_gateway_completion_tokens_total", **labels) == 9


def test_in_flight_counts_requests_between_start_and_finish(
    metrics: GatewayMetrics, observer: RequestMetricsObserver
) -> None:
    infos = [
        RequestInfo(request_id=str(i), method="POST", path=CHAT, started=time.perf_counter())
        for i in range(3)
    ]
    for info in infos:
        observer.request_started(info)
    assert value(metrics, "lora_gateway_in_flight_requests") == 3
    for info in infos:
        info.status = 200
        observer.request_finished(info)
        observer.request_finished(info)  # a second call is ignored
    assert value(metrics, "lora_gateway_in_flight_requests") == 0


def test_other_paths_are_not_counted(
    metrics: GatewayMetrics, observer: RequestMetricsObserver
) -> None:
    for path in ("/metrics", "/healthz", "/admin/adapters", "/v1/models"):
        serve_one(observer, None, path=path)
    text = metrics.render().decode()
    assert "lora_gateway_requests_total{" not in text
    assert value(metrics, "lora_gateway_in_flight_requests") == 0


def test_unknown_models_and_bad_bodies_share_one_bucket(
    metrics: GatewayMetrics, observer: RequestMetricsObserver
) -> None:
    for i in range(200):
        serve_one(observer, f"made-up-{i}", status=404)
    serve_one(observer, None, status=400)  # the body did not parse: no model known
    assert (
        value(metrics, "lora_gateway_requests_total", model=OTHER, adapter=OTHER, status_code="404")
        == 200
    )
    assert (
        value(metrics, "lora_gateway_requests_total", model=OTHER, adapter=OTHER, status_code="400")
        == 1
    )
    requests = next(
        family
        for family in text_string_to_metric_families(metrics.render().decode())
        if family.name == "lora_gateway_requests"
    )
    assert {sample.labels["model"] for sample in requests.samples} == {OTHER}


def test_client_that_left_mid_stream_is_a_499(
    metrics: GatewayMetrics, observer: RequestMetricsObserver
) -> None:
    events = sse_events("vllm-0.32-chat-stream-usage.sse")[:3]
    serve_one(observer, "legal", events=events, disconnected=True)
    assert (
        value(
            metrics,
            "lora_gateway_requests_total",
            model="legal",
            adapter="legal",
            status_code="499",
        )
        == 1
    )
    assert (
        value(
            metrics,
            "lora_gateway_requests_total",
            model="legal",
            adapter="legal",
            status_code="200",
        )
        is None
    )


@pytest.mark.parametrize(
    ("event", "tokens"),
    [
        (b'data: {"choices":[{"index":0,"text":" fox"}]}\n\n', True),
        (b'data: {"choices": [{"index": 0, "delta": {"content": "x"}}]}\n\n', True),
        (b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}\n\n', False),
        (b'data: {"choices": [], "usage": {"prompt_tokens": 1}}\n\n', False),
        (b"data: [DONE]\n\n", False),
        (
            b'data: {"error": {"message": "engine went away", "type": "engine_unavailable"}}\n\n',
            False,
        ),
        (b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n', False),
        # The Responses API and Anthropic's Messages API.
        (
            b"event: response.output_text.delta\n"
            b'data: {"type":"response.output_text.delta","delta":"x"}\n\n',
            True,
        ),
        (b'event: response.created\ndata: {"type":"response.created"}\n\n', False),
        (
            b"event: content_block_delta\ndata: "
            b'{"type":"content_block_delta","delta":{"type":"text_delta","text":"x"}}\n\n',
            True,
        ),
        (b'event: message_start\ndata: {"type":"message_start"}\n\n', False),
    ],
)
def test_token_event_detection(event: bytes, tokens: bool) -> None:
    assert is_token_event(event) is tokens


def test_forget_adapter_drops_its_series(
    metrics: GatewayMetrics, observer: RequestMetricsObserver, registered: dict[str, str]
) -> None:
    events = sse_events("vllm-0.32-chat-stream-usage.sse")
    for name in ("legal", "medical"):
        serve_one(observer, name, events=events, usage=(1, 1))
        metrics.adapter_events.on_load(name, 0.1)
    del registered["legal"]
    metrics.forget_adapter("legal")
    text = metrics.render().decode()
    assert 'adapter="legal"' not in text
    assert 'adapter="medical"' in text
    # A request after the name left the registry goes to the shared bucket.
    serve_one(observer, "legal", status=404)
    assert (
        value(metrics, "lora_gateway_requests_total", model=OTHER, adapter=OTHER, status_code="404")
        == 1
    )


def test_tracking_is_bounded(metrics: GatewayMetrics) -> None:
    observer = RequestMetricsObserver(metrics)
    infos = [
        RequestInfo(request_id="r", method="POST", path=CHAT, started=0.0)
        for _ in range(MAX_TRACKED + 10)
    ]
    for info in infos:
        observer.request_started(info)
    assert value(metrics, "lora_gateway_in_flight_requests") == MAX_TRACKED
