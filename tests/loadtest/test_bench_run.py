"""A tiny real run of the benchmark over the FAKE upstream: JSON, table and PNG come out right.

Short durations, no LiteLLM (its install is the benchmark's, not CI's) and no vLLM. Nothing
here depends on how fast anything is: only on what was counted.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.auth.key_store import KeyStore
from gateway.auth.keys import hash_secret, new_secret
from loadtest import report
from loadtest.limits_suite import (
    BENCH_LIMITS,
    LimitsPoint,
    default_database,
    limits_rows,
    seed_keys,
)
from loadtest.openloop import Outcome, PhaseResult
from loadtest.stats import summarize
from loadtest.suites import SuiteResult

REPO = Path(__file__).resolve().parents[2]


def run_bench(
    tmp_path: Path, base: Path, *args: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    results = tmp_path / "results"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtest",
            "bench",
            "--suites",
            "fake",
            "--results-dir",
            str(results),
            "--work-dir",
            str(tmp_path / "work"),
            "--base-model",
            str(base),
            "--duration",
            "1",
            "--max-rps-duration",
            "1",
            "--concurrency",
            "4",
            "--chunks",
            "3",
            "--repeat",
            "1",
            *args,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert (results / "bench.json").exists(), completed.stdout + completed.stderr
    return completed, json.loads((results / "bench.json").read_text())


def test_direct_only_run(tmp_path: Path, tiny_model_dir: Path) -> None:
    completed, data = run_bench(
        tmp_path,
        tiny_model_dir,
        "--targets",
        "direct",
        "--rates",
        "20,40",
        "--registry-size",
        "0",
        "--repeat",
        "2",
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert data["meta"]["errors"] == [] and data["meta"]["repeat"] == 2
    assert len(data["repetitions"]) == 2
    assert "CPU" in data["meta"]["placement"] and data["meta"]["machine"]["cpus"] >= 1
    latency = data["comparison"]["latency"]
    assert [(row["mode"], row["rate"]) for row in latency] == [
        ("full", 20.0),
        ("full", 40.0),
        ("stream", 20.0),
        ("stream", 40.0),
    ]
    assert all(len(row["direct_p50_ms"]["values"]) == 2 for row in latency)
    phases = data["repetitions"][1]["suites"][0]["latency"]
    assert [phase["requests"] for phase in phases] == [20, 40, 20, 40]
    assert all(phase["errors"] == 0 for phase in phases)
    for phase in phases:
        if phase["mode"] == "stream":
            # what the client counted equals what the fake says it sent: role + 3 + usage
            assert phase["chunks_out"] == phase["chunks_in"] == phase["requests"] * 5
    (maximum,) = data["comparison"]["max_rps"]
    assert maximum["direct_rps"]["min"] > 0 and maximum["gateway_rps"]["median"] is None
    assert (tmp_path / "results" / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Latency at fixed rates" in completed.stdout and "Maximum requests/s" in completed.stdout
    # Compared with itself: every figure is there, nothing is beyond the spread.
    again = subprocess.run(
        [sys.executable, "-c", COMPARE_SELF, str(tmp_path / "results" / "bench.json")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert again.returncode == 0, again.stderr
    assert "direct_rps" in again.stdout and "beyond spread" not in again.stdout


COMPARE_SELF = """
import json, sys
from rich.console import Console
from loadtest import repeats, report
data = json.loads(open(sys.argv[1]).read())
Console(width=250).print(report.difference_table(repeats.differences(data, data)))
"""


def test_refuses_a_run_without_the_baseline(tmp_path: Path) -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtest.bench",
            "--targets",
            "gateway",
            "--results-dir",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 2 and "baseline" in completed.stderr


def _stats(
    target: str, mode: str, rate: float, latency_s: float, chunks: int, chunks_in: int | None
) -> Any:
    outcomes = [
        Outcome(due_s=0, lag_s=0, latency_s=latency_s, ttft_s=None, chunks=chunks, status=200)
    ] * 10
    return summarize(
        PhaseResult(outcomes, 1.0), target=target, mode=mode, offered_rps=rate, chunks_in=chunks_in
    )


def test_comparison_ratios() -> None:
    suite = SuiteResult(
        upstream="fake",
        latency=[
            _stats("direct", "stream", 50, 0.001, 5, 50),
            _stats("gateway", "stream", 50, 0.002, 5, 50),
            _stats("litellm", "stream", 50, 0.005, 6, 50),
        ],
        max_rps=[_stats("direct", "full", 0, 0.001, 0, None)],
    )
    (row,), max_row = report.compare(suite)
    assert row.gateway_added_p50_ms == pytest.approx(1.0)
    assert row.litellm_added_p50_ms == pytest.approx(4.0)
    assert row.gateway_over_direct_p50 == pytest.approx(2.0)
    assert row.gateway_over_litellm_p50 == pytest.approx(0.4)
    assert row.gateway_added_over_litellm_added_p50 == pytest.approx(0.25)
    assert row.gateway_chunk_ratio == pytest.approx(1.0)
    assert row.litellm_chunk_ratio == pytest.approx(1.2)
    assert max_row.direct_rps == pytest.approx(10.0) and max_row.gateway_over_litellm is None


@pytest.mark.integration
def test_gateway_over_fake_run(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The real gateway (``lora-gateway serve --engine-url``) in the same tiny run."""
    completed, data = run_bench(
        tmp_path,
        tiny_model_dir,
        "--targets",
        "direct,gateway",
        "--rates",
        "20",
        "--registry-size",
        "0",
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    (row_full, row_stream) = data["comparison"]["latency"]
    assert row_full["gateway_added_p50_ms"]["median"] is not None
    assert row_stream["gateway_chunk_ratio"]["median"] is not None and row_stream["errors"] == 0
    gateway_phases = [
        p for p in data["repetitions"][0]["suites"][0]["latency"] if p["target"] == "gateway"
    ]
    stream = next(p for p in gateway_phases if p["mode"] == "stream")
    assert stream["chunks_in"] > 0 and stream["chunks_out"] > 0
    (maximum,) = data["comparison"]["max_rps"]
    assert maximum["gateway_rps"]["min"] > 0
    assert maximum["gateway_cpu_ms_per_request"]["min"] > 0
    assert (tmp_path / "results" / "logs" / "gateway-fake-three-way.log").exists()


@pytest.mark.integration
def test_registry_size_run(tmp_path: Path, tiny_model_dir: Path) -> None:
    """1 then 3 adapters registered through the gateway's admin API, traffic over the fake."""
    completed, data = run_bench(
        tmp_path,
        tiny_model_dir,
        "--targets",
        "direct,gateway",
        "--rates",
        "20",
        "--modes",
        "full",
        "--max-rps-duration",
        "1",
        "--registry-size",
        "3",
        "--registry-rate",
        "20",
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    registry = data["comparison"]["registry_size"]
    assert [(r["registered"], r["traffic"], r["errors"]) for r in registry] == [
        (1, "reg-0", 0),
        (3, "reg-0", 0),
        (3, "zipf over 3", 0),
    ]
    assert all(r["added_p50_ms"]["median"] is not None for r in registry)


@pytest.mark.integration
def test_placement_suite_over_two_fake_engines(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Both policies over 2 FAKE engines with slow loads: counters come back per policy."""
    completed, data = run_bench(
        tmp_path,
        tiny_model_dir,
        "--suites",
        "placement-fake",
        "--placement-adapters",
        "6",
        "--placement-duration",
        "3",
        "--placement-concurrency",
        "4",
        "--placement-load-delay-ms",
        "20",
        "--repeat",
        "1",
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    rows = data["comparison"]["placement"]
    assert [r["policy"] for r in rows] == ["replicate", "affinity"]
    for row in rows:
        assert row["errors"] == 0
        assert row["rps"]["median"] > 0 and row["loads"]["median"] > 0
        assert 0 <= row["resident_hit_ratio"]["median"] <= 1
    assert "Placement: 2 FAKE vLLM engines" in completed.stdout
    assert "affinity / replicate req/s = " in completed.stdout


@pytest.mark.integration
def test_limits_suite_run(tmp_path: Path, tiny_model_dir: Path) -> None:
    """``--suites limits`` end to end at a tiny scale: three real gateways over the fake (open,
    keys counted in memory, keys counted in a throwaway Redis), every case answered."""
    completed, data = run_bench(
        tmp_path,
        tiny_model_dir,
        "--suites",
        "limits",
        "--limits-keys",
        "30",
        "--limits-rate",
        "20",
        "--limits-duration",
        "1",
        "--repeat",
        "2",
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    rows = data["comparison"]["limits"]
    assert [row["case"] for row in rows] == [
        "no keys",
        "1 key, memory",
        "30 keys, memory",
        "1 key, redis",
        "30 keys, redis",
    ]
    has_redis = shutil.which("redis-server") is not None
    for row in rows:
        assert row["errors"] == 0 and row["repetitions"] == 2
        measured = row["storage"] != "redis" or has_redis
        assert (row["p50_ms"]["median"] is not None) is measured, row
        if row["keys"]["median"] and measured:
            assert row["added_p50_ms"]["median"] is not None
            assert len(row["added_p99_ms"]["values"]) == 2
        if not measured:
            assert row["note"].startswith("skipped")
    # each measured case got the whole offered load (1 s at 20 req/s), skipped ones none
    phases = data["repetitions"][0]["limits_points"]
    assert sum(p["stats"]["requests"] for p in phases if p["stats"]) == 20 * (3 + 2 * has_redis)
    assert "Limiter cost" in completed.stdout and "Latency at fixed rates" not in completed.stdout


def test_limits_rows_against_the_no_keys_case() -> None:
    def point(case: str, keys: int, latency_s: float | None) -> LimitsPoint:
        stats = None if latency_s is None else _stats(case, "full", 200, latency_s, 0, None)
        return LimitsPoint(case, keys, "memory" if keys else "-", stats, "" if stats else "off")

    rows = limits_rows(
        [point("no keys", 0, 0.002), point("1 key, memory", 1, 0.003), point("x", 9, None)]
    )
    assert rows[0]["added_p50_ms"] is None and rows[0]["p50_ms"] == pytest.approx(2.0)
    assert rows[1]["added_p50_ms"] == pytest.approx(1.0)
    assert rows[1]["over_no_keys_p99"] == pytest.approx(1.5)
    assert (
        rows[2]["p50_ms"] is None and rows[2]["added_p50_ms"] is None and rows[2]["note"] == "off"
    )


def test_seeded_keys_are_the_key_stores_own(tmp_path: Path) -> None:
    """The bench writes its keys straight into the registry: the store must read them back as
    keys ``lora-gateway keys create`` would have made (hash, prefix, scope, every limit)."""
    secrets = [new_secret() for _ in range(3)]
    seed_keys(default_database(tmp_path), secrets)
    store = KeyStore.open(default_database(tmp_path))
    try:
        key = store.by_hash(hash_secret(secrets[2]))
        assert key is not None and key.name == "bench-2" and key.prefix == secrets[2][:12]
        assert key.models == ("*",) and key.limits == BENCH_LIMITS and key.usable_at(key.created_at)
        assert len(store.list()) == 3
    finally:
        store.close()
