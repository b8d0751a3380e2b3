"""GatewayMetrics: bounded labels, upstream errors, lifecycle hooks, collect-time values."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from gateway.engines.base import Engine, EngineState, EngineStatus
from gateway.errors import (
    EngineUnavailableError,
    ModelNotFoundError,
    UpstreamHTTPError,
    UpstreamTimeoutError,
)
from gateway.observability.metrics import (
    BASE,
    OTHER,
    GatewayMetrics,
    RequestLabels,
    UpstreamErrorKind,
    upstream_error_kind,
)


class StaticEngine(Engine):
    """An engine whose state the test sets: only ``status()`` is read by the metrics."""

    def __init__(self, name: str, base_model: str = "tiny") -> None:
        super().__init__(name, base_model, lora_capacity=2)
        self.state = EngineState.READY
        self.restarts = 0

    @property
    def url(self) -> str:
        return "http://127.0.0.1:9"

    def status(self) -> EngineStatus:
        return EngineStatus(self.name, self.state, "test", self.restarts, self.url)

    async def start(self) -> None:
        self.state = EngineState.READY

    async def stop(self) -> None:
        self.state = EngineState.STOPPED


def make_metrics(registered: dict[str, str] | None = None) -> tuple[GatewayMetrics, dict[str, str]]:
    names = {} if registered is None else registered
    metrics = GatewayMetrics(
        engines=[StaticEngine("engine-0")],
        registered_adapters=names.keys,
        process_metrics=False,
    )
    return metrics, names


def value(metrics: GatewayMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_labels_are_bounded_by_the_registry() -> None:
    metrics, names = make_metrics({"legal": "/a/legal"})
    assert metrics.labels_for("tiny") == RequestLabels("tiny", BASE)
    assert metrics.labels_for("legal") == RequestLabels("legal", "legal")
    assert metrics.labels_for("made-up-by-a-client") == RequestLabels(OTHER, OTHER)
    assert metrics.labels_for(None) == RequestLabels(OTHER, OTHER)
    assert metrics.labels_for(["tiny"]) == RequestLabels(OTHER, OTHER)
    # The registry is read live: a name registered later gets its own label.
    names["medical"] = "/a/medical"
    assert metrics.labels_for("medical") == RequestLabels("medical", "medical")


def test_engines_bound_late_name_the_base_models() -> None:
    metrics = GatewayMetrics(process_metrics=False)
    assert metrics.labels_for("tiny") == RequestLabels(OTHER, OTHER)
    engine = StaticEngine("engine-0", base_model="tiny")
    metrics.bind_engines([engine])
    assert metrics.labels_for("tiny") == RequestLabels("tiny", BASE)
    # A remote engine learns its served name when it becomes ready: read live.
    engine.base_model = "smollm2-135m-instruct"
    assert metrics.labels_for("smollm2-135m-instruct") == RequestLabels(
        "smollm2-135m-instruct", BASE
    )
    assert metrics.labels_for("tiny") == RequestLabels(OTHER, OTHER)


def test_upstream_errors_by_kind() -> None:
    metrics, _ = make_metrics()
    for kind in UpstreamErrorKind:  # every kind is exported from the start, at 0
        assert value(metrics, "lora_gateway_upstream_errors_total", kind=kind.value) == 0
    cases = [
        (EngineUnavailableError("down"), UpstreamErrorKind.UNAVAILABLE),
        (UpstreamTimeoutError("slow"), UpstreamErrorKind.TIMEOUT),
        (UpstreamHTTPError(400, "bad"), UpstreamErrorKind.HTTP_4XX),
        (UpstreamHTTPError(503, "busy"), UpstreamErrorKind.HTTP_5XX),
    ]
    for error, kind in cases:
        assert upstream_error_kind(error) is kind
        metrics.upstream_error(kind)
    assert upstream_error_kind(ModelNotFoundError("no such model")) is None
    metrics.upstream_error(UpstreamErrorKind.STREAM_BROKEN)
    for kind in UpstreamErrorKind:
        assert value(metrics, "lora_gateway_upstream_errors_total", kind=kind.value) == 1


def test_adapter_lifecycle_hooks() -> None:
    metrics, _ = make_metrics({"legal": "/a/legal"})
    events = metrics.adapter_events
    events.on_load("legal", 0.4)
    events.on_load("legal", 2.0)
    events.on_evict("legal")
    events.on_unload("legal")
    events.on_load_failed("not-registered")
    assert value(metrics, "lora_gateway_adapter_loads_total", adapter="legal") == 2
    assert value(metrics, "lora_gateway_adapter_evictions_total", adapter="legal") == 1
    assert value(metrics, "lora_gateway_adapter_unloads_total", adapter="legal") == 1
    assert value(metrics, "lora_gateway_adapter_load_failures_total", adapter=OTHER) == 1
    assert value(metrics, "lora_gateway_adapter_load_duration_seconds_count") == 2
    assert value(metrics, "lora_gateway_adapter_load_duration_seconds_bucket", le="0.5") == 1


def test_collect_time_engine_and_adapter_state() -> None:
    engines = [StaticEngine("engine-0"), StaticEngine("engine-1")]
    names = {"a": "/a", "b": "/b", "c": "/c"}
    loaded = {"engine-0": 2, "engine-1": 1}
    metrics = GatewayMetrics(engines=engines, process_metrics=False)
    assert value(metrics, "lora_gateway_adapters_registered") == 0
    metrics.bind_adapters(registered=names.keys, loaded=lambda: loaded)
    engines[1].state = EngineState.DOWN
    engines[1].restarts = 3

    assert value(metrics, "lora_gateway_adapters_registered") == 3
    assert value(metrics, "lora_gateway_adapters_loaded", engine="engine-0") == 2
    assert value(metrics, "lora_gateway_engine_up", engine="engine-0") == 1
    assert value(metrics, "lora_gateway_engine_up", engine="engine-1") == 0
    assert value(metrics, "lora_gateway_engine_restarts_total", engine="engine-1") == 3

    engines[1].state = EngineState.READY  # values are read at each scrape, not cached
    loaded["engine-1"] = 2
    assert value(metrics, "lora_gateway_engine_up", engine="engine-1") == 1
    assert value(metrics, "lora_gateway_adapters_loaded", engine="engine-1") == 2


def test_each_app_has_its_own_registry() -> None:
    # Two apps in one process (tests, or two gateways) must not collide on metric names.
    first, _ = make_metrics()
    second, _ = make_metrics()
    first.children_for(first.labels_for("tiny")).requests("200").inc()
    labels = {"model": "tiny", "adapter": BASE, "status_code": "200"}
    assert value(first, "lora_gateway_requests_total", **labels) == 1
    assert value(second, "lora_gateway_requests_total", **labels) is None


def test_exposition_parses_and_has_every_family() -> None:
    metrics = GatewayMetrics(engines=[StaticEngine("engine-0")])
    metrics.children_for(metrics.labels_for("tiny")).requests("200").inc()
    names = {family.name for family in text_string_to_metric_families(metrics.render().decode())}
    expected = {
        "lora_gateway_requests",
        "lora_gateway_request_duration_seconds",
        "lora_gateway_time_to_first_token_seconds",
        "lora_gateway_inter_token_latency_seconds",
        "lora_gateway_prompt_tokens",
        "lora_gateway_completion_tokens",
        "lora_gateway_in_flight_requests",
        "lora_gateway_upstream_errors",
        "lora_gateway_adapter_loads",
        "lora_gateway_adapter_unloads",
        "lora_gateway_adapter_evictions",
        "lora_gateway_adapter_load_failures",
        "lora_gateway_adapter_load_duration_seconds",
        "lora_gateway_adapters_registered",
        "lora_gateway_adapters_loaded",
        "lora_gateway_engine_up",
        "lora_gateway_engine_restarts",
        "process_cpu_seconds",
    }
    assert expected <= names


def test_placement_events_and_slots_per_engine() -> None:
    engines = [StaticEngine("engine-0"), StaticEngine("engine-1")]
    events = [("engine-0", "resident_hit", 7), ("engine-1", "eviction", 2)]
    metrics = GatewayMetrics(engines=engines, process_metrics=False)
    assert (
        value(
            metrics, "lora_gateway_placement_events_total", engine="engine-0", event="resident_hit"
        )
        is None
    )
    metrics.bind_adapters(placement=lambda: events)
    assert (
        value(
            metrics, "lora_gateway_placement_events_total", engine="engine-0", event="resident_hit"
        )
        == 7
    )
    assert (
        value(metrics, "lora_gateway_placement_events_total", engine="engine-1", event="eviction")
        == 2
    )
    assert value(metrics, "lora_gateway_engine_adapter_slots", engine="engine-1") == 2
