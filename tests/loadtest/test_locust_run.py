"""The locustfile runs headless in a real locust process against the FAKE upstream.

Runs last a few seconds: locust needs a moment to spawn its users, and on a busy machine a
2-second run could end before the first request (no rows, nothing to check)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.procs import Service
from loadtest.run import LocustRun

REPO = Path(__file__).resolve().parents[2]


def run_loadtest(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loadtest", "run", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def stats_rows(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with path.open(newline="") as handle:
        return {(row["Type"], row["Name"]): row for row in csv.DictReader(handle)}


def test_streaming_run_writes_csv_html_and_summary(
    fake_vllm: Service, fake_chunks: int, tmp_path: Path
) -> None:
    completed = run_loadtest(
        [
            "--host",
            fake_vllm.url,
            "-u",
            "4",
            "-t",
            "3",
            "--results-dir",
            str(tmp_path),
            "--name",
            "zipf",
            "--stream",
            "--adapter-prefix",
            "legal",
            "--adapter-count",
            "8",
            "--distribution",
            "zipf",
            "--zipf-s",
            "1.2",
            "--rate",
            "40",
            "--max-tokens",
            "16",
        ]
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    rows = stats_rows(tmp_path / "zipf_stats.csv")
    post = rows[("POST", "chat stream")]
    requests = int(post["Request Count"])
    assert requests > 0 and int(post["Failure Count"]) == 0
    # response_length is the chunk count: role + tokens + usage
    assert float(post["Average Content Size"]) == 1 + fake_chunks + 1
    assert int(rows[("TTFT", "chat stream")]["Request Count"]) == requests
    assert int(rows[("ITL", "chat stream")]["Request Count"]) == requests * (fake_chunks - 1)
    assert (tmp_path / "zipf.html").stat().st_size > 0
    summary = json.loads((tmp_path / "zipf_summary.json").read_text())
    assert {row["type"] for row in summary["rows"]} >= {"POST", "TTFT", "ITL"}
    assert "TTFT" in completed.stdout and "chat stream" in completed.stdout


def test_full_answers_mixed_api_per_model_stats(fake_vllm: Service, tmp_path: Path) -> None:
    completed = run_loadtest(
        [
            "--host",
            fake_vllm.url,
            "-u",
            "2",
            "-t",
            "6",
            "--results-dir",
            str(tmp_path),
            "--api",
            "mixed",
            "--adapters",
            "a,b",
            "--distribution",
            "weighted",
            "--weights",
            "1,0",
            "--stats-per-model",
        ]
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    rows = stats_rows(tmp_path / "locust_stats.csv")
    names = {name for kind, name in rows if kind == "POST"}
    assert names <= {"chat full a", "completion full a"} and names
    assert all(int(rows[("POST", name)]["Failure Count"]) == 0 for name in names)


def test_failures_are_counted(fake_vllm: Service, tmp_path: Path) -> None:
    """A base URL with a wrong path: every request gets a 404, and locust says so."""
    completed = run_loadtest(
        [
            "--host",
            fake_vllm.url + "/wrong",
            "-u",
            "1",
            "-t",
            "6",
            "--results-dir",
            str(tmp_path),
            "--model",
            "m",
        ]
    )
    rows = stats_rows(tmp_path / "locust_stats.csv")
    post = rows[("POST", "chat full")]
    assert int(post["Failure Count"]) == int(post["Request Count"]) > 0
    assert completed.returncode == 1


def test_too_short_a_run_is_refused(tmp_path: Path) -> None:
    completed = run_loadtest(
        ["--host", "http://127.0.0.1:9", "-t", "1", "--results-dir", str(tmp_path)]
    )
    assert completed.returncode == 2 and "duration must be" in completed.stderr


def test_relative_results_dir_is_where_the_files_land(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: locust runs inside the results dir, so a relative ``--results-dir`` (the
    default ``results/locust-<date>``) made it write its CSVs one level deeper, and ``run``
    then failed with "locust wrote no stats"."""
    monkeypatch.chdir(tmp_path)
    run = LocustRun(host="http://127.0.0.1:1", results_dir=Path("results") / "x")
    assert run.results_dir == tmp_path / "results" / "x"
    command = run.command()
    assert command[command.index("--csv") + 1] == str(tmp_path / "results" / "x" / "locust")
