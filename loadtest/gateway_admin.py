"""What the benchmark asks of a running gateway besides inference: register adapters, read
counters from ``/metrics``.

Registration goes through the documented admin API with the one admin client
(:class:`adapters.client.AdminClient`), the same path an operator uses. Counters are read from
the gateway's Prometheus exposition by family name and summed over labels (e.g.
``lora_gateway_adapter_evictions``). Used by :mod:`loadtest.suites`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from adapters.client import AdminClient
from adapters.errors import AdapterError, AdapterErrorKind

EVICTIONS = "lora_gateway_adapter_evictions"
LOADS = "lora_gateway_adapter_loads"
REGISTER_TIMEOUT_S = 120.0


class AdminError(RuntimeError):
    pass


def register_adapters(
    base_url: str, admin_token: str, adapters: Iterable[tuple[str, Path]], *, load: bool
) -> int:
    """Register each (name, path); an already registered name counts. Returns how many."""
    count = 0
    with AdminClient(base_url, admin_token, timeout_s=REGISTER_TIMEOUT_S) as admin:
        for name, path in adapters:
            try:
                admin.register(name, path, load=load)
            except AdapterError as exc:
                if exc.kind is not AdapterErrorKind.CONFLICT:
                    raise AdminError(f"registering {name} failed: {exc}") from exc
            count += 1
    return count


def counter_total(base_url: str, family: str, *, headers: dict[str, str] | None = None) -> float:
    """Sum over labels of counter ``family`` (without ``_total``); 0 when absent."""
    response = httpx.get(base_url + "/metrics", headers=headers or {}, timeout=10.0)
    response.raise_for_status()
    total = 0.0
    for metric in text_string_to_metric_families(response.text):
        if metric.name == family:
            total += sum(s.value for s in metric.samples if s.name == family + "_total")
    return total


PLACEMENT_EVENTS = "lora_gateway_placement_events"


def placement_totals(base_url: str, *, headers: dict[str, str] | None = None) -> dict[str, float]:
    """The gateway's placement events (resident_hit, load, eviction, ...) summed over engines."""
    response = httpx.get(base_url + "/metrics", headers=headers or {}, timeout=10.0)
    response.raise_for_status()
    totals: dict[str, float] = {}
    for metric in text_string_to_metric_families(response.text):
        if metric.name == PLACEMENT_EVENTS:
            for sample in metric.samples:
                if sample.name == PLACEMENT_EVENTS + "_total":
                    event = sample.labels["event"]
                    totals[event] = totals.get(event, 0.0) + sample.value
    return totals


def fake_stream_chunks(fake_url: str) -> int:
    """Chunks the FAKE upstream has streamed so far (its own counter)."""
    response = httpx.get(fake_url + "/fake/stats", timeout=10.0)
    response.raise_for_status()
    return int(response.json()["stream_chunks_total"])
