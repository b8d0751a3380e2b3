"""The load-test run's PNG: TTFT and throughput over time, from locust's stats history.

``python -m loadtest run`` (:func:`loadtest.run.run_locust`) asks locust for its full stats
history (``<name>_stats_history.csv``, one row per entry about every second) and calls
:func:`plot_history`, which writes ``<name>_timeline.png`` beside locust's HTML report: the
top panel is time to first token (p50 and p95 of locust's sliding window; for runs without
``--stream``, the response time), the bottom one requests/s and failures/s. Only the real
requests (type ``POST``) count as throughput: the TTFT and ITL entries are measurements of
those requests, not requests of their own.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REQUEST_TYPE = "POST"
TTFT_TYPE = "TTFT"
#: Rows read at most (a day at one row per entry and second for a few entries).
MAX_ROWS = 1_000_000


@dataclass(frozen=True, slots=True)
class HistoryPoint:
    """One moment of the run, summed or weighted over the entries of a type."""

    elapsed_s: float
    requests_per_s: float
    failures_per_s: float
    #: Percentiles (ms) of the TTFT entries, or of the requests when nothing streamed.
    p50_ms: float | None
    p95_ms: float | None


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "", "N/A") else None
    except ValueError:
        return None


def _weighted(rows: list[dict[str, str]], column: str) -> float | None:
    pairs = [(_number(row[column]), _number(row["Requests/s"]) or 0.0) for row in rows]
    known = [(value, weight) for value, weight in pairs if value is not None]
    if not known:
        return None
    total = sum(weight for _, weight in known)
    if total == 0:
        return sum(value for value, _ in known) / len(known)
    return sum(value * weight for value, weight in known) / total


def read_history(path: Path) -> tuple[list[HistoryPoint], bool]:
    """The points of ``<name>_stats_history.csv`` and whether the run streamed (TTFT rows)."""
    by_time: dict[float, dict[str, list[dict[str, str]]]] = defaultdict(lambda: defaultdict(list))
    with path.open(newline="") as handle:
        for index, row in enumerate(csv.DictReader(handle)):
            if index >= MAX_ROWS:
                break
            stamp = _number(row.get("Timestamp"))
            if stamp is not None and row.get("Type") in (REQUEST_TYPE, TTFT_TYPE):
                by_time[stamp][row["Type"]].append(row)
    streamed = any(TTFT_TYPE in types for types in by_time.values())
    latency_type = TTFT_TYPE if streamed else REQUEST_TYPE
    points: list[HistoryPoint] = []
    start = min(by_time, default=0.0)
    for stamp in sorted(by_time):
        requests = by_time[stamp].get(REQUEST_TYPE, [])
        latency = by_time[stamp].get(latency_type, [])
        points.append(
            HistoryPoint(
                elapsed_s=stamp - start,
                requests_per_s=sum(_number(r["Requests/s"]) or 0.0 for r in requests),
                failures_per_s=sum(_number(r["Failures/s"]) or 0.0 for r in requests),
                p50_ms=_weighted(latency, "50%"),
                p95_ms=_weighted(latency, "95%"),
            )
        )
    return points, streamed


def timeline_figure(points: list[HistoryPoint], *, streamed: bool, title: str) -> Figure:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 6.4), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    elapsed = [p.elapsed_s for p in points]
    what = "TTFT" if streamed else "response time"
    for attr, label, style in (("p50_ms", "p50", "-"), ("p95_ms", "p95", "--")):
        shown = [(p.elapsed_s, getattr(p, attr)) for p in points if getattr(p, attr) is not None]
        if shown:
            xs, ys = zip(*shown, strict=True)
            top.plot(xs, ys, linestyle=style, marker=".", label=f"{what} {label}")
    top.set(
        title=f"{'Time to first token' if streamed else 'Response time'} (locust's sliding window)",
        xlabel="time since start (s)",
        ylabel=f"{what} (ms)",
    )
    bottom.plot(elapsed, [p.requests_per_s for p in points], marker=".", label="requests/s")
    bottom.plot(
        elapsed, [p.failures_per_s for p in points], color="C3", marker=".", label="failures/s"
    )
    bottom.set(title="Throughput", xlabel="time since start (s)", ylabel="throughput (requests/s)")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="upper right")
    if not points:
        top.text(
            0.5, 0.5, "no requests recorded", ha="center", va="center", transform=top.transAxes
        )
    fig.suptitle(title)
    return fig


def plot_history(history_csv: Path, path: Path, *, title: str) -> Path:
    """Read locust's stats history and write the timeline PNG at ``path``."""
    points, streamed = read_history(history_csv)
    timeline_figure(points, streamed=streamed, title=title).savefig(path, dpi=110)
    return path
