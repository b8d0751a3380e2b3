"""The benchmark's report: comparisons with ratios, JSON and rich tables
(the PNG is :mod:`loadtest.plot`).

:func:`compare` derives, per upstream, mode and rate, the gateway's and LiteLLM's added latency
over direct and their ratios (gateway/direct, gateway/LiteLLM), and the same for maximum req/s.
:func:`write_json` and :func:`print_tables` render one :class:`BenchReport`. No
process or network here: the tests feed it a tiny real run. Used by :mod:`loadtest.bench`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from loadtest import repeats
from loadtest.adapter_suites import PlacementPoint, RegistryPoint, ScalingPoint, placement_ratio
from loadtest.limits_suite import LimitsPoint, limits_rows
from loadtest.stats import PhaseStats, added, ratio
from loadtest.suites import DIRECT, GATEWAY, LITELLM, SuiteResult


@dataclass(slots=True)
class BenchReport:
    meta: dict[str, Any]
    suites: list[SuiteResult] = field(default_factory=list)
    registry: list[RegistryPoint] = field(default_factory=list)
    scaling: list[ScalingPoint] = field(default_factory=list)
    placement: list[PlacementPoint] = field(default_factory=list)
    #: Where the placement suite ran ("2 real vLLM engines" or "2 FAKE vLLM engines ...").
    placement_upstream: str = ""
    #: The limiter's cost: the gateway without keys, with 1 and with N keys, memory and Redis.
    limits: list[LimitsPoint] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class LatencyRow:
    upstream: str
    mode: str
    rate: float
    direct_p50_ms: float | None
    direct_p99_ms: float | None
    gateway_added_p50_ms: float | None
    gateway_added_p99_ms: float | None
    litellm_added_p50_ms: float | None
    litellm_added_p99_ms: float | None
    gateway_over_direct_p50: float | None
    gateway_over_litellm_p50: float | None
    gateway_added_over_litellm_added_p50: float | None
    gateway_chunk_ratio: float | None
    litellm_chunk_ratio: float | None
    errors: int
    #: Targets that fell behind the offered rate (their latencies are left out).
    overloaded: list[str]


@dataclass(frozen=True, slots=True)
class MaxRow:
    upstream: str
    direct_rps: float | None
    gateway_rps: float | None
    litellm_rps: float | None
    gateway_over_direct: float | None
    gateway_over_litellm: float | None
    gateway_cpu_ms_per_request: float | None
    litellm_cpu_ms_per_request: float | None


def _get(stats: PhaseStats | None, attribute: str) -> float | None:
    if stats is None:
        return None
    value = getattr(stats, attribute)
    return None if value is None else float(value)


def _chunk_ratio(stats: PhaseStats | None, direct: PhaseStats | None) -> float | None:
    """Chunks out / chunks in: from the upstream's own counter when it has one (the fake),
    else chunks per request against the direct run (same requests, fixed output length)."""
    if stats is None or stats.mode != "stream":
        return None
    if stats.chunks_in:
        return stats.chunk_ratio
    if direct is None or not direct.requests or not stats.requests or not direct.chunks_out:
        return None
    per_request = stats.chunks_out / max(1, stats.requests - stats.errors)
    return per_request / (direct.chunks_out / max(1, direct.requests - direct.errors))


def compare(suite: SuiteResult) -> tuple[list[LatencyRow], MaxRow]:
    by_key = {(s.target, s.mode, s.offered_rps): s for s in suite.latency}
    rows = []
    for mode, rate in dict.fromkeys((s.mode, s.offered_rps) for s in suite.latency):
        assert rate is not None
        phases = [by_key.get((t, mode, rate)) for t in (DIRECT, GATEWAY, LITELLM)]
        overloaded = [s.target for s in phases if s is not None and s.overloaded]
        d, g, lt = (None if s is None or s.overloaded else s for s in phases)
        g_add = added(_get(g, "p50_ms"), _get(d, "p50_ms"))
        l_add = added(_get(lt, "p50_ms"), _get(d, "p50_ms"))
        rows.append(
            LatencyRow(
                upstream=suite.upstream,
                mode=mode,
                rate=rate,
                direct_p50_ms=_get(d, "p50_ms"),
                direct_p99_ms=_get(d, "p99_ms"),
                gateway_added_p50_ms=g_add,
                gateway_added_p99_ms=added(_get(g, "p99_ms"), _get(d, "p99_ms")),
                litellm_added_p50_ms=l_add,
                litellm_added_p99_ms=added(_get(lt, "p99_ms"), _get(d, "p99_ms")),
                gateway_over_direct_p50=ratio(_get(g, "p50_ms"), _get(d, "p50_ms")),
                gateway_over_litellm_p50=ratio(_get(g, "p50_ms"), _get(lt, "p50_ms")),
                gateway_added_over_litellm_added_p50=ratio(g_add, l_add),
                gateway_chunk_ratio=_chunk_ratio(g, d),
                litellm_chunk_ratio=_chunk_ratio(lt, d),
                errors=sum(s.errors for s in phases if s is not None),
                overloaded=overloaded,
            )
        )
    maxima = {s.target: s for s in suite.max_rps}
    rps = {t: maxima[t].achieved_rps if t in maxima else None for t in (DIRECT, GATEWAY, LITELLM)}
    max_row = MaxRow(
        upstream=suite.upstream,
        direct_rps=rps[DIRECT],
        gateway_rps=rps[GATEWAY],
        litellm_rps=rps[LITELLM],
        gateway_over_direct=ratio(rps[GATEWAY], rps[DIRECT]),
        gateway_over_litellm=ratio(rps[GATEWAY], rps[LITELLM]),
        gateway_cpu_ms_per_request=maxima[GATEWAY].cpu_ms_per_request
        if GATEWAY in maxima
        else None,
        litellm_cpu_ms_per_request=maxima[LITELLM].cpu_ms_per_request
        if LITELLM in maxima
        else None,
    )
    return rows, max_row


def registry_rows(points: list[RegistryPoint]) -> list[dict[str, Any]]:
    """Gateway added latency per (registered, traffic), against direct with the same traffic."""
    direct = {
        p.traffic if p.traffic.startswith("zipf") else "single": p.stats
        for p in points
        if p.label == DIRECT
    }
    rows = []
    for p in points:
        if p.label != GATEWAY:
            continue
        base = direct.get(p.traffic if p.traffic.startswith("zipf") else "single")
        rows.append(
            {
                "registered": p.registered,
                "traffic": p.traffic,
                "p50_ms": p.stats.p50_ms,
                "p99_ms": p.stats.p99_ms,
                "added_p50_ms": added(p.stats.p50_ms, _get(base, "p50_ms")),
                "added_p99_ms": added(p.stats.p99_ms, _get(base, "p99_ms")),
                "errors": p.stats.errors,
            }
        )
    return rows


def to_dict(report: BenchReport) -> dict[str, Any]:
    comparisons = [compare(suite) for suite in report.suites]
    return {
        "meta": report.meta,
        "comparison": {
            "latency": [asdict(row) for rows, _ in comparisons for row in rows],
            "max_rps": [asdict(max_row) for _, max_row in comparisons],
            "registry_size": registry_rows(report.registry),
            "adapter_scaling": [
                {
                    "adapters": p.adapters,
                    "rps": p.stats.achieved_rps,
                    "ttft_p50_ms": p.stats.ttft_p50_ms,
                    "ttft_p95_ms": p.stats.ttft_p95_ms,
                    "evictions": p.evictions,
                    "loads": p.loads,
                    "errors": p.stats.errors,
                }
                for p in report.scaling
            ],
            "placement": [
                {
                    "policy": p.policy,
                    "upstream": report.placement_upstream,
                    "rps": p.stats.achieved_rps,
                    "ttft_p50_ms": p.stats.ttft_p50_ms,
                    "ttft_p95_ms": p.stats.ttft_p95_ms,
                    "resident_hit_ratio": p.hit_ratio,
                    "loads": p.loads,
                    "evictions": p.evictions,
                    "replications": p.replications,
                    "errors": p.stats.errors,
                }
                for p in report.placement
            ],
            "placement_affinity_over_replicate": placement_ratio(report.placement),
            "limits": limits_rows(report.limits),
        },
        "suites": [asdict(suite) for suite in report.suites],
        "registry_points": [asdict(p) for p in report.registry],
        "scaling_points": [asdict(p) for p in report.scaling],
        "placement_points": [asdict(p) for p in report.placement],
        "limits_points": [asdict(p) for p in report.limits],
    }


def repeated_to_dict(meta: dict[str, Any], reports: list[BenchReport]) -> dict[str, Any]:
    """Several repetitions: the comparison as medians with min-max spreads
    (:func:`loadtest.repeats.aggregate`), each repetition's own figures under ``repetitions``."""
    runs = [to_dict(report) for report in reports]
    for run in runs:
        del run["meta"]
    return {
        "meta": {**meta, "repeat": len(reports)},
        "comparison": repeats.aggregate(runs),
        "repetitions": runs,
    }


def write_json(data: dict[str, Any], path: Path) -> dict[str, Any]:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    return data


def _f(value: Any, digits: int = 2, suffix: str = "") -> str:
    """A figure; a spread as ``median (min-max)``."""
    if repeats.is_spread(value):
        median, low, high = value["median"], value["min"], value["max"]
        if median is None:
            return "-"
        if len(value["values"]) < 2:
            return f"{median:.{digits}f}{suffix}"
        return f"{median:.{digits}f}{suffix} ({low:.{digits}f}-{high:.{digits}f})"
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def difference_table(found: list[repeats.Difference]) -> Table:
    """``--compare``: old and new medians with spreads; changes beyond the spread flagged."""
    table = Table(title="Against the earlier run (flagged: the min-max ranges do not overlap)")
    for column in ("table", "row", "figure", "old", "new", "change", "flag"):
        table.add_column(column, justify="right" if column in ("old", "new", "change") else "left")
    for diff in found:
        table.add_row(
            diff.table,
            " ".join(str(part) for part in diff.row),
            diff.field,
            _f(diff.old),
            _f(diff.new),
            f"{diff.change:+.2f}",
            "[bold red]beyond spread[/bold red]" if diff.beyond_spread else "",
        )
    return table


def tables(data: dict[str, Any]) -> list[Table]:
    comparison = data["comparison"]
    latency = Table(title="Latency at fixed rates (ms; added = target - direct)")
    for column in (
        "upstream",
        "mode",
        "req/s",
        "direct p50",
        "direct p99",
        "gw +p50",
        "gw +p99",
        "litellm +p50",
        "litellm +p99",
        "gw/direct p50",
        "gw/litellm p50",
        "gw chunks out/in",
        "litellm chunks out/in",
        "errors",
        "overloaded",
    ):
        latency.add_column(column, justify="left" if column in ("upstream", "mode") else "right")
    for row in comparison["latency"]:
        latency.add_row(
            row["upstream"],
            row["mode"],
            _f(row["rate"], 0),
            _f(row["direct_p50_ms"]),
            _f(row["direct_p99_ms"]),
            _f(row["gateway_added_p50_ms"]),
            _f(row["gateway_added_p99_ms"]),
            _f(row["litellm_added_p50_ms"]),
            _f(row["litellm_added_p99_ms"]),
            _f(row["gateway_over_direct_p50"], 2, "x"),
            _f(row["gateway_over_litellm_p50"], 2, "x"),
            _f(row["gateway_chunk_ratio"], 3),
            _f(row["litellm_chunk_ratio"], 3),
            str(row["errors"]),
            ",".join(row["overloaded"]) or "-",
        )
    maximum = Table(title="Maximum requests/s (closed loop; server under test on one core)")
    for column in (
        "upstream",
        "direct",
        "gateway",
        "litellm",
        "gw/direct",
        "gw/litellm",
        "gw CPU ms/req",
        "litellm CPU ms/req",
    ):
        maximum.add_column(column, justify="left" if column == "upstream" else "right")
    for row in comparison["max_rps"]:
        maximum.add_row(
            row["upstream"],
            _f(row["direct_rps"], 0),
            _f(row["gateway_rps"], 0),
            _f(row["litellm_rps"], 0),
            _f(row["gateway_over_direct"], 2, "x"),
            _f(row["gateway_over_litellm"], 2, "x"),
            _f(row["gateway_cpu_ms_per_request"]),
            _f(row["litellm_cpu_ms_per_request"]),
        )
    # A run of other suites only (e.g. ``--suites limits``) has no three-way rows to show.
    result = [latency, maximum] if comparison["latency"] or comparison["max_rps"] else []
    if comparison["registry_size"]:
        registry = Table(title="Registry size: gateway over the fake upstream (ms)")
        for column in ("registered", "traffic", "p50", "p99", "added p50", "added p99", "errors"):
            registry.add_column(column, justify="right")
        for row in comparison["registry_size"]:
            registry.add_row(
                str(row["registered"]),
                row["traffic"],
                _f(row["p50_ms"]),
                _f(row["p99_ms"]),
                _f(row["added_p50_ms"]),
                _f(row["added_p99_ms"]),
                str(row["errors"]),
            )
        result.append(registry)
    if comparison["adapter_scaling"]:
        scaling = Table(title="Adapter scaling: gateway over vLLM, Zipf mix")
        for column in (
            "adapters",
            "req/s",
            "TTFT p50 ms",
            "TTFT p95 ms",
            "evictions",
            "loads",
            "errors",
        ):
            scaling.add_column(column, justify="right")
        for row in comparison["adapter_scaling"]:
            scaling.add_row(
                str(row["adapters"]),
                _f(row["rps"], 1),
                _f(row["ttft_p50_ms"], 1),
                _f(row["ttft_p95_ms"], 1),
                _f(row["evictions"], 0),
                _f(row["loads"], 0),
                str(row["errors"]),
            )
        result.append(scaling)
    if comparison.get("placement"):
        rows = comparison["placement"]

        def median(value: Any) -> float | None:
            return value["median"] if repeats.is_spread(value) else value

        rps = {row["policy"]: median(row["rps"]) for row in rows}
        low, high = rps.get("replicate"), rps.get("affinity")
        ratio = high / low if low and high is not None else None
        ratio_text = _f(ratio, 2, "x")
        table = Table(
            title=f"Placement: {rows[0]['upstream']}; affinity / replicate req/s = {ratio_text}"
        )
        for column in (
            "policy",
            "req/s",
            "TTFT p50 ms",
            "TTFT p95 ms",
            "resident hits",
            "loads",
            "evictions",
            "replications",
            "errors",
        ):
            table.add_column(column, justify="right")
        for row in rows:
            table.add_row(
                row["policy"],
                _f(row["rps"], 1),
                _f(row["ttft_p50_ms"], 1),
                _f(row["ttft_p95_ms"], 1),
                _f(row["resident_hit_ratio"], 3),
                _f(row["loads"], 0),
                _f(row["evictions"], 0),
                _f(row["replications"], 0),
                str(row["errors"]),
            )
        result.append(table)
    if comparison.get("limits"):
        result.append(limits_table(comparison["limits"]))
    return result


def limits_table(rows: list[dict[str, Any]]) -> Table:
    """The limiter's cost: each case against the no-keys gateway of the same repetition."""
    rate = next((repeats.median_of(r["rate"]) for r in rows if repeats.median_of(r["rate"])), None)
    table = Table(
        title=f"Limiter cost: gateway over the fake upstream at {_f(rate, 0)} req/s, full answers "
        "(ms; added = case - no keys, same repetition)"
    )
    for column in (
        "case",
        "p50",
        "p99",
        "added p50",
        "added p99",
        "p50 / no keys",
        "p99 / no keys",
        "gw CPU ms/req",
        "errors",
        "note",
    ):
        table.add_column(column, justify="left" if column in ("case", "note") else "right")
    for row in rows:
        table.add_row(
            row["case"],
            _f(row["p50_ms"]),
            _f(row["p99_ms"]),
            _f(row["added_p50_ms"]),
            _f(row["added_p99_ms"]),
            _f(row["over_no_keys_p50"], 2, "x"),
            _f(row["over_no_keys_p99"], 2, "x"),
            _f(row["cpu_ms_per_request"]),
            str(row["errors"]),
            row["note"] or ("overloaded" if row["overloaded"] else ""),
        )
    return table


def print_tables(data: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console(width=200)
    for table in tables(data):
        console.print(table)
