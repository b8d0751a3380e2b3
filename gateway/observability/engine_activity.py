"""The engines' per-adapter activity, turned from vLLM's info gauge into proper gauges.

vLLM reports per-adapter activity only as ``vllm:lora_requests_info{max_lora,
running_lora_adapters, waiting_lora_adapters}``: a gauge whose value is the time it was last set
and whose labels are comma-joined adapter names. Every label combination ever seen stays in the
output, so the current state is the sample with the latest value. :func:`parse_lora_activity`
reads that; :class:`EngineAdapterActivity` scrapes every engine's ``/metrics`` (through
``engine.client.metrics_text()``) and exports ``lora_gateway_engine_adapter_running_requests`` and
``..._waiting_requests{engine, adapter}``, with upstream (versioned) names mapped back to public
names by a callable from the adapter lifecycle.

What the numbers mean depends on the vLLM version. vLLM 0.32 joins the adapter names of its
per-adapter request tables, so each name appears at most once and both labels list every adapter
with any running or waiting request (seen on a real engine: tests/gateway/fixtures/). The value
is then 1 for an adapter with requests on the engine, 0 for one that had some before. Versions
that repeat a name per request give counts: the parser counts occurrences either way. The
gateway's own ``lora_gateway_in_flight_requests{adapter}`` is the exact count of its requests.

Scraping happens on demand: :meth:`EngineAdapterActivity.refresh` is a scrape hook of
:class:`gateway.observability.metrics.GatewayMetrics`, awaited by ``GET /metrics`` before it
renders. prometheus-client collectors are synchronous while the engine client is async, so a scrape
in ``collect()`` would block the event loop; a background poller would work while nobody scrapes and
serve data up to a period old. On demand, the data is as fresh as the scrape, engines are scraped
concurrently under a short timeout, and scrapes that arrive together share one refresh.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter as Tally
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass, field

import httpx
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from gateway.engines.base import Engine
from gateway.errors import GatewayError
from gateway.observability.metrics import OTHER, PREFIX

LORA_INFO = "vllm:lora_requests_info"
#: More names than any engine holds (vLLM's --max-cpu-loras is at most a few thousand here).
MAX_NAMES_PER_SAMPLE = 4096


@dataclass(frozen=True, slots=True)
class LoraActivity:
    """The latest ``vllm:lora_requests_info`` sample of one engine, names as the engine knows."""

    running: dict[str, int]
    waiting: dict[str, int]
    #: Every name seen in any sample: adapters that were active once and are idle now.
    seen: frozenset[str]
    max_lora: int | None
    set_at: float


@dataclass(slots=True)
class _EngineSnapshot:
    activity: LoraActivity | None = None
    scrape_failures: int = 0


def _names(joined: str) -> list[str]:
    return [name for name in joined.split(",") if name][:MAX_NAMES_PER_SAMPLE]


def parse_lora_activity(text: str) -> LoraActivity | None:
    """Parse an engine's ``/metrics`` text; ``None`` if it has no LoRA info sample yet."""
    # Parse only the info family: the whole vLLM exposition takes ~15 ms to parse.
    lines = [line for line in text.splitlines() if LORA_INFO in line]
    if not lines:
        return None
    samples = [
        sample
        for family in text_string_to_metric_families("\n".join(lines) + "\n")
        if family.name == LORA_INFO
        for sample in family.samples
    ]
    if not samples:
        return None
    seen: set[str] = set()
    for sample in samples:
        seen.update(_names(sample.labels.get("running_lora_adapters", "")))
        seen.update(_names(sample.labels.get("waiting_lora_adapters", "")))
    latest = max(samples, key=lambda sample: sample.value)
    max_lora_text = latest.labels.get("max_lora", "")
    return LoraActivity(
        running=dict(Tally(_names(latest.labels.get("running_lora_adapters", "")))),
        waiting=dict(Tally(_names(latest.labels.get("waiting_lora_adapters", "")))),
        seen=frozenset(seen),
        max_lora=int(max_lora_text) if max_lora_text.isdigit() else None,
        set_at=latest.value,
    )


def public_counts(
    activity: LoraActivity, public_name_of: Callable[[str], str | None]
) -> tuple[dict[str, int], dict[str, int]]:
    """Running and waiting counts by public adapter name; unknown names go to ``__other__``.

    Every name the engine ever reported is present (0 when idle now), so an adapter's series
    goes to 0 instead of vanishing when its requests end.
    """
    running: dict[str, int] = {}
    waiting: dict[str, int] = {}
    for upstream in activity.seen:
        public = public_name_of(upstream) or OTHER
        running[public] = running.get(public, 0) + activity.running.get(upstream, 0)
        waiting[public] = waiting.get(public, 0) + activity.waiting.get(upstream, 0)
    return running, waiting


def versioned_public_name(
    registered: Callable[[], Container[str]],
) -> Callable[[str], str | None]:
    """Map the lifecycle's upstream names (``NAME@vN.tag``) to registered public names.

    ``@`` is not allowed in public names, so the name is what comes before it; a name that is
    not registered (another client's adapter on a shared engine) maps to ``None``.
    """

    def public_name_of(upstream: str) -> str | None:
        name = upstream.partition("@")[0]
        return name if name in registered() else None

    return public_name_of


@dataclass(slots=True)
class _RefreshState:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    last: float = float("-inf")


class EngineAdapterActivity(Collector):
    """Per-engine, per-adapter running / waiting requests, refreshed before each scrape."""

    def __init__(
        self,
        engines: Sequence[Engine],
        public_name_of: Callable[[str], str | None],
        *,
        scrape_timeout_s: float = 2.0,
        min_interval_s: float = 1.0,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._public_name_of = public_name_of
        self._timeout_s = scrape_timeout_s
        self._min_interval_s = min_interval_s
        self._refresh = _RefreshState()
        self._engines: list[Engine] = []
        self._snapshots: dict[str, _EngineSnapshot] = {}
        self.bind_engines(engines)
        if registry is not None:
            registry.register(self)

    def bind_engines(self, engines: Sequence[Engine]) -> None:
        """The engines to scrape (``create_app`` may only know them once its lifespan runs)."""
        self._engines = list(engines)
        self._snapshots = {engine.name: _EngineSnapshot() for engine in self._engines}
        self._refresh.last = float("-inf")

    async def refresh(self) -> None:
        """Scrape every engine once; a refresh younger than ``min_interval_s`` is reused."""
        async with self._refresh.lock:
            if time.monotonic() - self._refresh.last < self._min_interval_s:
                return
            await asyncio.gather(*(self._scrape(engine) for engine in self._engines))
            self._refresh.last = time.monotonic()

    async def _scrape(self, engine: Engine) -> None:
        snapshot = self._snapshots[engine.name]
        try:
            text = await asyncio.wait_for(engine.client.metrics_text(), self._timeout_s)
            activity = parse_lora_activity(text)
        except (GatewayError, TimeoutError, httpx.HTTPError, ValueError):
            # Stale numbers are worse than none: the engine's series disappear until it answers.
            snapshot.activity = None
            snapshot.scrape_failures += 1
            return
        snapshot.activity = activity

    def describe(self) -> Iterable[Metric]:
        return list(self._families())

    def collect(self) -> Iterable[Metric]:
        running_family, waiting_family, failures_family = self._families()
        for engine_name, snapshot in self._snapshots.items():
            failures_family.add_metric([engine_name], snapshot.scrape_failures)
            if snapshot.activity is None:
                continue
            running, waiting = public_counts(snapshot.activity, self._public_name_of)
            for adapter, count in running.items():
                running_family.add_metric([engine_name, adapter], count)
            for adapter, count in waiting.items():
                waiting_family.add_metric([engine_name, adapter], count)
        return [running_family, waiting_family, failures_family]

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, CounterMetricFamily]:
        labels = ["engine", "adapter"]
        return (
            GaugeMetricFamily(
                PREFIX + "engine_adapter_running_requests",
                "Requests of an adapter running on an engine (vLLM's view).",
                labels=labels,
            ),
            GaugeMetricFamily(
                PREFIX + "engine_adapter_waiting_requests",
                "Requests of an adapter waiting on an engine (vLLM's view).",
                labels=labels,
            ),
            CounterMetricFamily(
                PREFIX + "engine_metrics_scrape_failures",
                "Failed scrapes of an engine's /metrics.",
                labels=["engine"],
            ),
        )
