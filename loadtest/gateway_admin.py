"""What the benchmark asks of a running gateway besides inference: register adapters, read
counters from ``/metrics``.

Registration goes through the documented admin API (``POST /admin/adapters {"name", "path",
"load"}`` with the admin bearer token), the same path an operator uses. Counters are read from
the gateway's Prometheus exposition by family name and summed over labels (e.g.
``lora_gateway_adapter_evictions``). Used by :mod:`loadtest.suites`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

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
    headers = {"Authorization": f"Bearer {admin_token}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=REGISTER_TIMEOUT_S) as client:
        for name, path in adapters:
            response = client.post(
                "/admin/adapters", json={"name": name, "path": str(path), "load": load}
            )
            if response.status_code not in (200, 201, 409):
                raise AdminError(
                    f"registering {name} failed: HTTP {response.status_code} {response.text[:300]}"
                )
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


def fake_stream_chunks(fake_url: str) -> int:
    """Chunks the FAKE upstream has streamed so far (its own counter)."""
    response = httpx.get(fake_url + "/fake/stats", timeout=10.0)
    response.raise_for_status()
    return int(response.json()["stream_chunks_total"])
