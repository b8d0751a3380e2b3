"""Repetitions: medians with spreads, ratios within a repetition, and ``--compare``.

Fed by hand-built phases through the real report code (no processes, no timing).
"""

from __future__ import annotations

from typing import Any

import pytest
from rich.console import Console

from loadtest import repeats, report
from loadtest.openloop import Outcome, PhaseResult
from loadtest.stats import PhaseStats, summarize
from loadtest.suites import SuiteResult


def _phase(target: str, mode: str, rate: float, latency_ms: float) -> PhaseStats:
    outcome = Outcome(
        due_s=0, lag_s=0, latency_s=latency_ms / 1e3, ttft_s=None, chunks=1, status=200
    )
    return summarize(PhaseResult([outcome] * 10, 1.0), target=target, mode=mode, offered_rps=rate)


def _repetition(direct_ms: float, gateway_ms: float) -> dict[str, Any]:
    suite = SuiteResult(
        upstream="fake",
        latency=[
            _phase("direct", "full", 200, direct_ms),
            _phase("gateway", "full", 200, gateway_ms),
        ],
        max_rps=[_phase("direct", "full", 0, direct_ms)],
    )
    data = report.to_dict(report.BenchReport(meta={}, suites=[suite]))
    del data["meta"]
    return data


def test_spread_is_median_min_max_of_what_was_measured() -> None:
    assert repeats.spread([3.0, None, 1.0, 2.0]) == {
        "median": 2.0,
        "min": 1.0,
        "max": 3.0,
        "values": [3.0, None, 1.0, 2.0],
    }
    assert repeats.spread([None, None])["median"] is None


def test_ratios_come_from_the_baseline_of_the_same_repetition() -> None:
    # The machine's mood moves direct and gateway together; the ratio per repetition does not
    # see it, a ratio of the medians would (3.0 / 2.0 = 1.5 here, against a median ratio of 2).
    runs = [_repetition(1.0, 2.0), _repetition(2.0, 3.0), _repetition(4.0, 8.0)]
    data = report.repeated_to_dict({"date": "x"}, [])  # the shape with no repetitions
    assert data["comparison"]["latency"] == [] and data["meta"]["repeat"] == 0
    (row,) = repeats.aggregate(runs)["latency"]
    assert (row["upstream"], row["mode"], row["rate"]) == ("fake", "full", 200)
    ratio = row["gateway_over_direct_p50"]
    assert ratio["median"] == pytest.approx(2.0)
    assert (ratio["min"], ratio["max"]) == (pytest.approx(1.5), pytest.approx(2.0))
    added = row["gateway_added_p50_ms"]
    assert added["median"] == pytest.approx(1.0) and added["max"] == pytest.approx(4.0)
    assert added["values"] == pytest.approx([1.0, 1.0, 4.0])
    assert row["errors"] == 0 and row["repetitions"] == 3
    assert row["litellm_added_p50_ms"]["median"] is None


def test_repeated_json_keeps_every_repetition_raw() -> None:
    suite = SuiteResult(
        upstream="fake",
        latency=[_phase("direct", "full", 50, 1.0)],
        max_rps=[_phase("direct", "full", 0, 1.0)],
    )
    reports = [report.BenchReport(meta={"date": "d"}, suites=[suite]) for _ in range(3)]
    data = report.repeated_to_dict({"date": "d"}, reports)
    assert data["meta"]["repeat"] == 3 and len(data["repetitions"]) == 3
    assert data["repetitions"][2]["suites"][0]["latency"][0]["requests"] == 10
    assert data["comparison"]["max_rps"][0]["direct_rps"]["values"] == [10.0, 10.0, 10.0]
    text = _render(report.tables(data))
    assert "10 (10-10)" in text


def _render(tables: Any) -> str:
    console = Console(width=250, record=True)
    for table in tables if isinstance(tables, list) else [tables]:
        console.print(table)
    return console.export_text()


def _run(*gateway_ms: float) -> dict[str, Any]:
    return {"comparison": repeats.aggregate([_repetition(1.0, g) for g in gateway_ms])}


def test_compare_flags_only_changes_beyond_the_spread() -> None:
    old = _run(2.0, 2.2, 2.6)
    within = repeats.differences(old, _run(2.4, 2.5, 3.0))
    beyond = repeats.differences(old, _run(3.0, 3.1, 3.4))
    key = ("latency", ("fake", "full", 200), "gateway_added_p50_ms")

    def pick(found: list[repeats.Difference]) -> repeats.Difference:
        return next(d for d in found if (d.table, d.row, d.field) == key)

    assert pick(within).change == pytest.approx(0.3) and not pick(within).beyond_spread
    assert pick(beyond).change == pytest.approx(0.9) and pick(beyond).beyond_spread
    # The baseline did not move: not flagged, and present with a zero change.
    direct = next(d for d in beyond if d.field == "direct_p50_ms")
    assert direct.change == 0 and not direct.beyond_spread
    text = _render(report.difference_table(beyond))
    assert "beyond spread" in text and "+0.90" in text


def test_compare_reads_a_run_from_before_repetitions() -> None:
    # An old bench.json: bare numbers, one run. Each is a spread of one value.
    old = {"comparison": {"max_rps": [{"upstream": "fake", "gateway_rps": 2008.0}]}}
    new = {
        "comparison": {
            "max_rps": [{"upstream": "fake", "gateway_rps": repeats.spread([2500.0, 2600.0])}]
        }
    }
    (diff,) = repeats.differences(old, new)
    assert diff.change == pytest.approx(542.0) and diff.beyond_spread
