"""The PNGs people read: every panel's axes say what they measure and in which unit."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from loadtest.plot import bench_figure, plot
from loadtest.timeline import plot_history, read_history, timeline_figure

UNIT = re.compile(r"\S.*\(.+\)$")  # "added latency (ms)"
PNG = b"\x89PNG\r\n\x1a\n"


def assert_axes_labelled(fig: Any) -> int:
    """Every visible axis of every panel carries a label ending in its unit; returns panels."""
    panels = 0
    for ax in fig.axes:
        if not ax.axison:
            continue
        panels += 1
        assert UNIT.match(ax.get_ylabel()), f"panel {ax.get_title()!r}: y {ax.get_ylabel()!r}"
        if ax.xaxis.get_visible():  # a twin's x axis is its host's
            assert UNIT.match(ax.get_xlabel()), f"panel {ax.get_title()!r}: x {ax.get_xlabel()!r}"
    return panels


def bench_data(*, scaling: bool) -> dict[str, Any]:
    latency = [
        {
            "upstream": upstream,
            "mode": "full",
            "rate": rate,
            "gateway_added_p50_ms": 0.8,
            "gateway_added_p99_ms": 2.5,
            "litellm_added_p50_ms": 9.0,
            "litellm_added_p99_ms": 30.0,
        }
        for upstream in ("fake", "vllm")
        for rate in (10, 50)
    ]
    max_rps = [
        {"upstream": "fake", "direct_rps": 2000.0, "gateway_rps": 900.0, "litellm_rps": 90.0}
    ]
    adapter_scaling = [
        {"adapters": n, "rps": 40.0 / n**0.1, "ttft_p50_ms": 30.0 + n, "ttft_p95_ms": 60.0 + n}
        for n in (1, 8, 64)
    ]
    return {
        "meta": {"date": "2026-12-03"},
        "comparison": {
            "latency": latency,
            "max_rps": max_rps,
            "adapter_scaling": adapter_scaling if scaling else [],
        },
    }


@pytest.mark.parametrize("scaling", [True, False])
def test_bench_png_panels_have_labelled_axes_with_units(scaling: bool, tmp_path: Path) -> None:
    data = bench_data(scaling=scaling)
    assert assert_axes_labelled(bench_figure(data)) == (4 if scaling else 2)
    assert plot(data, tmp_path / "bench.png").read_bytes()[:8] == PNG


HISTORY_HEADER = (
    "Timestamp,User Count,Type,Name,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,"
    "99.9%,99.99%,100%,Total Request Count,Total Failure Count,Total Median Response Time,"
    "Total Average Response Time,Total Min Response Time,Total Max Response Time,"
    "Total Average Content Size"
)


def history_row(ts: int, kind: str, name: str, rps: float, fps: float, p50: str, p95: str) -> str:
    cells = [str(ts), "4", kind, name, str(rps), str(fps), p50, "0", "0", "0", "0", p95]
    return ",".join(cells + ["0"] * 12)


def test_timeline_reads_requests_and_ttft_over_time(tmp_path: Path) -> None:
    lines = [
        HISTORY_HEADER,
        history_row(1000, "", "Aggregated", 0, 0, "N/A", "N/A"),
        history_row(1001, "POST", "chat stream a", 10, 0, "120", "200"),
        history_row(1001, "POST", "chat stream b", 30, 1, "100", "150"),
        history_row(1001, "TTFT", "chat stream a", 10, 0, "20", "40"),
        history_row(1001, "TTFT", "chat stream b", 30, 0, "40", "80"),
        history_row(1001, "ITL", "chat stream a", 500, 0, "2", "3"),
        history_row(1001, "", "Aggregated", 570, 1, "5", "100"),
        history_row(1003, "POST", "chat stream a", 12, 0, "N/A", "N/A"),
    ]
    history = tmp_path / "run_stats_history.csv"
    history.write_text("\n".join(lines) + "\n")
    points, streamed = read_history(history)
    assert streamed
    assert [p.elapsed_s for p in points] == [0.0, 2.0]
    first, second = points
    # Throughput counts the requests, not the TTFT/ITL measurements or the Aggregated line.
    assert (first.requests_per_s, first.failures_per_s) == (40.0, 1.0)
    assert first.p50_ms == pytest.approx(35.0) and first.p95_ms == pytest.approx(70.0)
    assert second.requests_per_s == 12.0 and second.p50_ms is None
    assert assert_axes_labelled(timeline_figure(points, streamed=True, title="t")) == 2
    png = plot_history(history, tmp_path / "run_timeline.png", title="t")
    assert png.read_bytes()[:8] == PNG


def test_timeline_without_streaming_shows_response_times(tmp_path: Path) -> None:
    history = tmp_path / "full_stats_history.csv"
    history.write_text(
        "\n".join([HISTORY_HEADER, history_row(5, "POST", "chat full", 8, 0, "90", "110")]) + "\n"
    )
    points, streamed = read_history(history)
    assert not streamed and points[0].p50_ms == 90.0
    fig = timeline_figure(points, streamed=False, title="t")
    assert fig.axes[0].get_ylabel() == "response time (ms)"
