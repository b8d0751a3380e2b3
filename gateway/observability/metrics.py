"""The gateway's Prometheus metrics: one :class:`GatewayMetrics` per app, with its own registry.

``create_app`` builds it, serves it at ``GET /metrics`` (:mod:`gateway.api.metrics`) and
binds its sources once engines and the adapter lifecycle exist. Who feeds it:

- the request middleware, through
  :class:`gateway.observability.request_metrics.RequestMetricsObserver` (the app's
  :class:`~gateway.inference.record.RequestObserver`): requests, latency, time to first token,
  inter-token latency, tokens, in-flight; the error path calls :meth:`GatewayMetrics.upstream_error`
  with :func:`upstream_error_kind` of an engine failure;
- the adapter lifecycle (``gateway.lifecycle.service``): :attr:`GatewayMetrics.adapter_events`
  implements its observer hooks (``on_load``, ``on_unload``, ``on_evict``, ``on_load_failed``,
  and ``on_delete``, which drops a deleted adapter's series);
- values read at scrape time: the engines' ``status()`` (:meth:`GatewayMetrics.bind_engines`),
  registered names and loaded adapters per engine (:meth:`GatewayMetrics.bind_adapters`), and
  async scrape hooks such as :class:`gateway.observability.engine_activity.EngineAdapterActivity`.

Label values come only from registered names (and the engines' base models): a request for
anything else is counted under ``model="__other__", adapter="__other__"``, so the number of
series is bounded by the registry, never by clients. The hot path uses label children resolved
once per (model, adapter) and cached here.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.engines.base import Engine, EngineState
from gateway.errors import (
    EngineUnavailableError,
    GatewayError,
    UpstreamHTTPError,
    UpstreamTimeoutError,
)

PREFIX = "lora_gateway_"
#: The one label value for every model / adapter name that is not registered.
OTHER = "__other__"
#: The adapter label of requests for a base model.
BASE = "base"

ScrapeHook = Callable[[], Awaitable[None]]


class OverheadPhase(StrEnum):
    """The ``phase`` label of ``lora_gateway_overhead_seconds``."""

    PRE = "pre"
    POST = "post"


class UpstreamErrorKind(StrEnum):
    UNAVAILABLE = "unavailable"
    TIMEOUT = "timeout"
    HTTP_4XX = "http_4xx"
    HTTP_5XX = "http_5xx"
    STREAM_BROKEN = "stream_broken"  # the engine's stream ended early, after headers went out


def upstream_error_kind(error: GatewayError) -> UpstreamErrorKind | None:
    """The kind of an engine-side failure; ``None`` for errors the gateway raised itself."""
    if isinstance(error, EngineUnavailableError):
        return UpstreamErrorKind.UNAVAILABLE
    if isinstance(error, UpstreamTimeoutError):
        return UpstreamErrorKind.TIMEOUT
    if isinstance(error, UpstreamHTTPError):
        return UpstreamErrorKind.HTTP_4XX if error.status < 500 else UpstreamErrorKind.HTTP_5XX
    return None


@dataclass(frozen=True, slots=True)
class Buckets:
    """Histogram bucket bounds in seconds, tuned for LLM serving (ms tokens, s-long requests)."""

    # fmt: off
    request: tuple[float, ...] = (
        0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    )
    first_token: tuple[float, ...] = (
        0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    )
    inter_token: tuple[float, ...] = (
        0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0, 2.5,
    )
    # fmt: on
    adapter_load: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
    #: The gateway's own time per request: sub-millisecond when healthy.
    overhead: tuple[float, ...] = (
        0.0001,
        0.00025,
        0.0005,
        0.001,
        0.0025,
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.5,
        2.5,
    )


@dataclass(frozen=True, slots=True)
class RequestLabels:
    model: str
    adapter: str


class RequestChildren:
    """The label children of one (model, adapter), resolved once and reused by every request."""

    __slots__ = (
        "completion",
        "duration",
        "first_token",
        "inter_token",
        "labels",
        "prompt",
        "requests_by_status",
        "requests_family",
    )

    def __init__(self, metrics: GatewayMetrics, labels: RequestLabels) -> None:
        model, adapter = labels.model, labels.adapter
        self.labels = labels
        self.duration = metrics.request_duration.labels(model, adapter)
        self.first_token = metrics.time_to_first_token.labels(model, adapter)
        self.inter_token = metrics.inter_token_latency.labels(model, adapter)
        self.prompt = metrics.prompt_tokens.labels(model, adapter)
        self.completion = metrics.completion_tokens.labels(model, adapter)
        self.requests_family = metrics.requests
        self.requests_by_status: dict[str, Counter] = {}

    def requests(self, status_code: str) -> Counter:
        child = self.requests_by_status.get(status_code)
        if child is None:
            child = self.requests_family.labels(self.labels.model, self.labels.adapter, status_code)
            self.requests_by_status[status_code] = child
        return child


class AdapterEventRecorder:
    """The adapter lifecycle's observer: counts loads, unloads, evictions and load failures."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics
        self._label = metrics.adapter_label

    def on_load(self, name: str, seconds: float) -> None:
        self._metrics.adapter_loads.labels(self._label(name)).inc()
        self._metrics.adapter_load_duration.observe(seconds)

    def on_unload(self, name: str) -> None:
        self._metrics.adapter_unloads.labels(self._label(name)).inc()

    def on_evict(self, name: str) -> None:
        self._metrics.adapter_evictions.labels(self._label(name)).inc()

    def on_load_failed(self, name: str) -> None:
        self._metrics.adapter_load_failures.labels(self._label(name)).inc()

    def on_delete(self, name: str) -> None:
        self._metrics.forget_adapter(name)


def _no_adapters() -> Collection[str]:
    return ()


def _nothing_loaded() -> Mapping[str, int]:
    return {}


def _no_placement() -> list[tuple[str, str, int]]:
    return []


@dataclass(frozen=True, slots=True)
class _State:
    registered: int
    loaded: dict[str, int]
    #: (engine name, placement event, count)
    placement: list[tuple[str, str, int]]
    #: (engine name, ready, restarts)
    engines: list[tuple[str, bool, int]]


class _StateCollector(Collector):
    """Values read at scrape time: registered and loaded adapters, engine up and restarts.

    The lifecycle's tables are only safe to walk on the event loop. For a render in a worker
    thread, :meth:`read` runs on the loop and :meth:`render_with` hands that snapshot to the
    worker (thread-local, so concurrent renders never mix); anywhere else :meth:`collect`
    reads live.
    """

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics
        self._local = threading.local()

    def read(self) -> _State:
        metrics = self._metrics
        statuses = [engine.status() for engine in metrics.engines]
        return _State(
            registered=len(metrics.registered_adapters()),
            loaded=dict(metrics.loaded_adapters()),
            placement=list(metrics.placement_events()),
            engines=[(s.name, s.state is EngineState.READY, s.restarts) for s in statuses],
        )

    def render_with(self, state: _State, registry: CollectorRegistry) -> bytes:
        """Render ``registry`` with this collector reporting ``state`` (in a worker thread)."""
        self._local.state = state
        try:
            return generate_latest(registry)
        finally:
            self._local.state = None

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        registered, loaded, up, restarts, placement, slots = self._families()
        state: _State | None = getattr(self._local, "state", None)
        if state is None:
            state = self.read()
        registered.add_metric([], state.registered)
        for engine_name, count in state.loaded.items():
            loaded.add_metric([engine_name], count)
        for engine_name, ready, restart_count in state.engines:
            up.add_metric([engine_name], 1.0 if ready else 0.0)
            restarts.add_metric([engine_name], restart_count)
        for engine_name, event, count in state.placement:
            placement.add_metric([engine_name, event], count)
        for engine in self._metrics.engines:
            slots.add_metric([engine.name], engine.lora_capacity)
        return [registered, loaded, up, restarts, placement, slots]

    @staticmethod
    def _families() -> tuple[
        GaugeMetricFamily,
        GaugeMetricFamily,
        GaugeMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
        GaugeMetricFamily,
    ]:
        return (
            GaugeMetricFamily(PREFIX + "adapters_registered", "Adapters in the registry."),
            GaugeMetricFamily(
                PREFIX + "adapters_loaded", "Adapters loaded per engine.", labels=["engine"]
            ),
            GaugeMetricFamily(
                PREFIX + "engine_up", "1 if the engine is ready, else 0.", labels=["engine"]
            ),
            CounterMetricFamily(
                PREFIX + "engine_restarts", "Engine restarts by the gateway.", labels=["engine"]
            ),
            CounterMetricFamily(
                PREFIX + "placement_events",
                "Placement decisions per engine: resident_hit, resident_miss, load, eviction, "
                "replication, failover.",
                labels=["engine", "event"],
            ),
            GaugeMetricFamily(
                PREFIX + "engine_adapter_slots",
                "Adapter slots of each engine (its --max-cpu-loras); used: adapters_loaded.",
                labels=["engine"],
            ),
        )


class GatewayMetrics:
    """Every metric family of one gateway app, in its own :class:`CollectorRegistry`."""

    def __init__(
        self,
        *,
        engines: Sequence[Engine] = (),
        registered_adapters: Callable[[], Collection[str]] | None = None,
        loaded_adapters: Callable[[], Mapping[str, int]] | None = None,
        buckets: Buckets | None = None,
        process_metrics: bool = True,
    ) -> None:
        b = buckets or Buckets()
        self.registry = CollectorRegistry(auto_describe=True)
        self.engines: list[Engine] = list(engines)
        self.registered_adapters: Callable[[], Collection[str]] = _no_adapters
        self.loaded_adapters: Callable[[], Mapping[str, int]] = _nothing_loaded
        self.placement_events: Callable[[], list[tuple[str, str, int]]] = _no_placement
        self.bind_adapters(registered=registered_adapters, loaded=loaded_adapters)
        self._scrape_hooks: list[ScrapeHook] = []
        self._scrape_lock = asyncio.Lock()
        self._children: dict[RequestLabels, RequestChildren] = {}
        r = self.registry

        per_request = ["model", "adapter"]
        self.requests = Counter(
            PREFIX + "requests",
            "Requests by model, adapter and status.",
            [*per_request, "status_code"],
            registry=r,
        )
        self.request_duration = Histogram(
            PREFIX + "request_duration_seconds",
            "End-to-end request latency in the gateway.",
            per_request,
            buckets=b.request,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            PREFIX + "time_to_first_token_seconds",
            "Time to the first streamed token.",
            per_request,
            buckets=b.first_token,
            registry=r,
        )
        self.inter_token_latency = Histogram(
            PREFIX + "inter_token_latency_seconds",
            "Gap between consecutive streamed tokens.",
            per_request,
            buckets=b.inter_token,
            registry=r,
        )
        self.prompt_tokens = Counter(
            PREFIX + "prompt_tokens", "Prompt tokens (engine usage).", per_request, registry=r
        )
        self.completion_tokens = Counter(
            PREFIX + "completion_tokens",
            "Completion tokens (engine usage).",
            per_request,
            registry=r,
        )
        self.overhead = Histogram(
            PREFIX + "overhead_seconds",
            "The gateway's own time per proxied request: before the engine had it (pre) and "
            "after the engine's last byte (post).",
            ["phase"],
            buckets=b.overhead,
            registry=r,
        )
        self.overhead_pre = self.overhead.labels(OverheadPhase.PRE.value)
        self.overhead_post = self.overhead.labels(OverheadPhase.POST.value)
        self.in_flight = Gauge(
            PREFIX + "in_flight_requests", "OpenAI requests being served now.", registry=r
        )
        self.upstream_errors = Counter(
            PREFIX + "upstream_errors", "Engine failures by kind.", ["kind"], registry=r
        )
        self._upstream_children = {
            kind: self.upstream_errors.labels(kind.value) for kind in UpstreamErrorKind
        }
        self.adapter_loads = Counter(
            PREFIX + "adapter_loads", "Adapter loads onto an engine.", ["adapter"], registry=r
        )
        self.adapter_unloads = Counter(
            PREFIX + "adapter_unloads", "Adapter unloads.", ["adapter"], registry=r
        )
        self.adapter_evictions = Counter(
            PREFIX + "adapter_evictions",
            "Adapters unloaded to make room (LRU).",
            ["adapter"],
            registry=r,
        )
        self.adapter_load_failures = Counter(
            PREFIX + "adapter_load_failures",
            "Adapter loads the engine refused or that failed.",
            ["adapter"],
            registry=r,
        )
        self.adapter_load_duration = Histogram(
            PREFIX + "adapter_load_duration_seconds",
            "Time to load an adapter onto an engine.",
            buckets=b.adapter_load,
            registry=r,
        )
        self._state = _StateCollector(self)
        r.register(self._state)
        if process_metrics:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        self.adapter_events = AdapterEventRecorder(self)

    # --- wiring ------------------------------------------------------------------------------
    def bind_engines(self, engines: Sequence[Engine]) -> None:
        """The engines to report on (``create_app`` may only know them once its lifespan runs)."""
        self.engines = list(engines)

    def bind_adapters(
        self,
        *,
        registered: Callable[[], Collection[str]] | None = None,
        loaded: Callable[[], Mapping[str, int]] | None = None,
        placement: Callable[[], list[tuple[str, str, int]]] | None = None,
    ) -> None:
        """Name the adapter sources (the lifecycle is often built after the metrics).

        ``registered`` is called once per request to bound label values: return a live view
        (``dict.keys()``), not a copy. ``loaded`` maps engine name to adapters loaded there.
        """
        if registered is not None:
            self.registered_adapters = registered
        if loaded is not None:
            self.loaded_adapters = loaded
        if placement is not None:
            self.placement_events = placement

    def add_scrape_hook(self, hook: ScrapeHook) -> None:
        """An async refresh awaited before each scrape (e.g. the engines' adapter activity)."""
        self._scrape_hooks.append(hook)

    async def prepare_scrape(self) -> None:
        for hook in self._scrape_hooks:
            await hook()

    async def scrape(self) -> bytes:
        """Refresh (scrape hooks, state snapshot) on the loop, then render in a worker thread.

        Rendering costs about 0.45 ms per adapter with traffic (its ~58 series: three
        histograms of 13-14 buckets each, counters, ``_created`` samples), all in
        prometheus-client's text writer: about 45 ms for 100 adapters. On the event loop that
        would stall every request for as long; in a thread the loop keeps running (it waits
        at most one GIL switch interval, 5 ms, at a time). Values are read under
        prometheus-client's own locks, and the state read from the lifecycle is a snapshot
        taken here, on the loop. Concurrent scrapes take turns.
        """
        async with self._scrape_lock:
            await self.prepare_scrape()
            state = self._state.read()
            return await asyncio.to_thread(self._state.render_with, state, self.registry)

    def render(self) -> bytes:
        """The registry in Prometheus' text format, on the calling thread (tests, tools).

        Call :meth:`prepare_scrape` first for fresh engine activity; ``GET /metrics`` uses
        :meth:`scrape`.
        """
        return generate_latest(self.registry)

    # --- labels ------------------------------------------------------------------------------
    def in_flight_requests(self) -> int:
        """OpenAI requests being served now (for ``GET /admin/status``)."""
        return int(
            sum(sample.value for family in self.in_flight.collect() for sample in family.samples)
        )

    def adapter_label(self, name: str) -> str:
        return name if name in self.registered_adapters() else OTHER

    def labels_for(self, requested_model: object) -> RequestLabels:
        """Bounded labels for the ``model`` a client asked for."""
        if isinstance(requested_model, str):
            # Read each time: a remote engine learns its served name when it becomes ready.
            if any(engine.base_model == requested_model for engine in self.engines):
                return RequestLabels(requested_model, BASE)
            if requested_model in self.registered_adapters():
                return RequestLabels(requested_model, requested_model)
        return RequestLabels(OTHER, OTHER)

    def children_for(self, labels: RequestLabels) -> RequestChildren:
        """The cached label children of (model, adapter); the request path's only lookup."""
        children = self._children.get(labels)
        if children is None:
            children = self._children[labels] = RequestChildren(self, labels)
        return children

    def forget_adapter(self, name: str) -> None:
        """Drop every series of an adapter that left the registry (keeps cardinality bounded)."""
        for labels in [key for key in self._children if key.adapter == name]:
            children = self._children.pop(labels)
            for status in children.requests_by_status:
                self.requests.remove(labels.model, labels.adapter, status)
            for family in (
                self.request_duration,
                self.time_to_first_token,
                self.inter_token_latency,
                self.prompt_tokens,
                self.completion_tokens,
            ):
                family.remove(labels.model, labels.adapter)
        for counter in (
            self.adapter_loads,
            self.adapter_unloads,
            self.adapter_evictions,
            self.adapter_load_failures,
        ):
            try:
                counter.remove(name)
            except KeyError:
                pass

    def upstream_error(self, kind: UpstreamErrorKind) -> None:
        self._upstream_children[kind].inc()
