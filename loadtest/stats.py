"""Figures from a benchmark phase: latency percentiles, TTFT, lag, chunks, throughput.

:func:`summarize` turns a :class:`~loadtest.openloop.PhaseResult` into a flat, JSON-ready
:class:`PhaseStats`; :func:`added` is a target's percentile minus the direct percentile at the
same load (requests cannot be paired across runs, distributions can). Used by the suites and
the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from loadtest.openloop import PhaseResult


def percentile_ms(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.percentile(np.asarray(values, dtype=float), q)) * 1e3


@dataclass(frozen=True, slots=True)
class PhaseStats:
    target: str
    mode: str  # "full" or "stream"
    offered_rps: float | None  # None for closed loop
    requests: int
    errors: int
    achieved_rps: float
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    ttft_p99_ms: float | None
    lag_p99_ms: float | None
    chunks_out: int
    chunks_in: int | None = None
    cpu_ms_per_request: float | None = None
    first_error: str | None = None
    overloaded: bool = False

    @property
    def chunk_ratio(self) -> float | None:
        if not self.chunks_in:
            return None
        return self.chunks_out / self.chunks_in


def summarize(
    result: PhaseResult,
    *,
    target: str,
    mode: str,
    offered_rps: float | None,
    chunks_in: int | None = None,
    cpu_s: float | None = None,
) -> PhaseStats:
    ok = result.ok
    latencies = [o.latency_s for o in ok]
    ttfts = [o.ttft_s for o in ok if o.ttft_s is not None]
    errors = [o for o in result.outcomes if not o.ok]
    return PhaseStats(
        target=target,
        mode=mode,
        offered_rps=offered_rps,
        requests=len(result.outcomes),
        errors=len(errors),
        achieved_rps=len(ok) / result.elapsed_s if result.elapsed_s > 0 else 0.0,
        p50_ms=percentile_ms(latencies, 50),
        p90_ms=percentile_ms(latencies, 90),
        p99_ms=percentile_ms(latencies, 99),
        mean_ms=float(np.mean(latencies)) * 1e3 if latencies else None,
        ttft_p50_ms=percentile_ms(ttfts, 50),
        ttft_p95_ms=percentile_ms(ttfts, 95),
        ttft_p99_ms=percentile_ms(ttfts, 99),
        lag_p99_ms=percentile_ms([o.lag_s for o in result.outcomes], 99),
        chunks_out=sum(o.chunks for o in ok),
        chunks_in=chunks_in,
        cpu_ms_per_request=(
            cpu_s * 1e3 / len(result.outcomes) if cpu_s is not None and result.outcomes else None
        ),
        first_error=errors[0].error if errors else None,
        overloaded=result.overloaded,
    )


def added(value: float | None, baseline: float | None) -> float | None:
    if value is None or baseline is None:
        return None
    return value - baseline


def ratio(value: float | None, baseline: float | None) -> float | None:
    if value is None or not baseline:
        return None
    return value / baseline
