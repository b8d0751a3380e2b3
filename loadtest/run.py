"""``python -m loadtest run``: one command that runs the locustfile headless and reports.

Starts a real locust process on :mod:`loadtest.locustfile` with the given users, duration and
target, forwards every workload option it does not know itself to the locustfile (``--rate``,
``--adapters``, ``--distribution``, ``--stream`` ...; see ``locust -f loadtest/locustfile.py
--help``), writes ``<name>_stats.csv`` (and the other locust CSVs, the full stats history
included), ``<name>.html``, ``<name>_timeline.png`` (TTFT and throughput over time,
:mod:`loadtest.timeline`) and ``<name>_summary.json`` into the results directory, and prints a
rich table.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from loadtest.timeline import plot_history

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
MAX_USERS = 10_000
MAX_DURATION_S = 24 * 3600
# locust 2.47 writes an empty final _stats.csv for a 1 s run.
MIN_DURATION_S = 2.0


@dataclass(frozen=True, slots=True)
class LocustRun:
    host: str
    results_dir: Path
    users: int = 16
    spawn_rate: float = 0.0  # 0: all users at once
    duration_s: float = 30.0
    name: str = "locust"
    #: Workload arguments for the locustfile (e.g. ``["--rate", "50", "--stream"]``).
    workload_args: list[str] = field(default_factory=list)
    #: CPUs the locust process is pinned to; None: not pinned.
    cpus: frozenset[int] | None = None

    def __post_init__(self) -> None:
        # locust runs inside the results dir: every path handed to it must be absolute.
        object.__setattr__(self, "results_dir", self.results_dir.resolve())
        if not 1 <= self.users <= MAX_USERS:
            raise ValueError(f"users must be 1..{MAX_USERS}, got {self.users}")
        if not MIN_DURATION_S <= self.duration_s <= MAX_DURATION_S:
            raise ValueError(
                f"duration must be {MIN_DURATION_S:.0f}..{MAX_DURATION_S} s, got {self.duration_s}"
            )
        if not self.host.startswith(("http://", "https://")):
            raise ValueError(f"host must be an http(s) URL, got {self.host!r}")

    @property
    def csv_prefix(self) -> Path:
        return self.results_dir / self.name

    def command(self) -> list[str]:
        spawn = self.spawn_rate or self.users
        return [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(LOCUSTFILE),
            "--headless",
            "--host",
            self.host,
            "-u",
            str(self.users),
            "-r",
            str(spawn),
            "-t",
            f"{max(1, round(self.duration_s))}s",
            "--stop-timeout",
            "10",
            "--csv",
            str(self.csv_prefix),
            "--csv-full-history",
            "--html",
            str(self.csv_prefix) + ".html",
            "--only-summary",
            *self.workload_args,
        ]


@dataclass(frozen=True, slots=True)
class StatRow:
    type: str
    name: str
    requests: int
    failures: int
    rps: float
    avg_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


@dataclass(frozen=True, slots=True)
class RunSummary:
    run: str
    exit_code: int
    stats_csv: str
    html: str
    rows: list[StatRow]
    #: TTFT and throughput over time (None when locust wrote no stats history).
    timeline_png: str | None = None


def _number(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return 0.0


def read_stats(path: Path) -> list[StatRow]:
    """Rows of locust's ``_stats.csv``, the Aggregated line included (type empty)."""
    with path.open(newline="") as handle:
        return [
            StatRow(
                type=row["Type"],
                name=row["Name"],
                requests=int(row["Request Count"]),
                failures=int(row["Failure Count"]),
                rps=_number(row["Requests/s"]),
                avg_ms=_number(row["Average Response Time"]),
                p50_ms=_number(row["50%"]),
                p95_ms=_number(row["95%"]),
                p99_ms=_number(row["99%"]),
                max_ms=_number(row["Max Response Time"]),
            )
            for row in csv.DictReader(handle)
        ]


def _pin(cpus: frozenset[int] | None) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)


def run_locust(run: LocustRun, *, timeout_s: float | None = None) -> RunSummary:
    """Run locust to the end (duration + grace) and read its CSV."""
    run.results_dir.mkdir(parents=True, exist_ok=True)
    log_path = run.results_dir / f"{run.name}.log"
    with log_path.open("wb") as log:
        completed = subprocess.run(
            run.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            check=False,
            timeout=timeout_s or run.duration_s + 60,
            cwd=run.results_dir,
            preexec_fn=(lambda: _pin(run.cpus)) if run.cpus else None,
        )
    stats_csv = Path(str(run.csv_prefix) + "_stats.csv")
    if not stats_csv.exists():
        tail = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"locust wrote no stats (exit {completed.returncode}):\n{tail}")
    history_csv = Path(str(run.csv_prefix) + "_stats_history.csv")
    timeline: Path | None = None
    if history_csv.exists():
        timeline = plot_history(
            history_csv,
            Path(str(run.csv_prefix) + "_timeline.png"),
            title=f"locust run {run.name!r}: {run.users} users against {run.host}",
        )
    summary = RunSummary(
        run=run.name,
        exit_code=completed.returncode,
        stats_csv=str(stats_csv),
        html=str(run.csv_prefix) + ".html",
        rows=read_stats(stats_csv),
        timeline_png=str(timeline) if timeline is not None else None,
    )
    summary_path = Path(str(run.csv_prefix) + "_summary.json")
    summary_path.write_text(json.dumps(asdict(summary), indent=2))
    return summary


def summary_table(summary: RunSummary) -> Table:
    table = Table(title=f"locust run {summary.run!r}")
    for column in (
        "type",
        "name",
        "reqs",
        "fails",
        "req/s",
        "avg ms",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
    ):
        table.add_column(column, justify="left" if column in ("type", "name") else "right")
    for row in summary.rows:
        table.add_row(
            row.type or "all",
            row.name,
            str(row.requests),
            str(row.failures),
            f"{row.rps:.1f}",
            f"{row.avg_ms:.1f}",
            f"{row.p50_ms:.0f}",
            f"{row.p95_ms:.0f}",
            f"{row.p99_ms:.0f}",
            f"{row.max_ms:.0f}",
        )
    return table


def print_summary(summary: RunSummary, console: Console | None = None) -> None:
    console = console or Console()
    if not console.is_terminal:  # a pipe or a log: do not squeeze the table into 80 columns
        console.width = 160
    console.print(summary_table(summary))
    console.print(f"CSV: {summary.stats_csv}\nHTML: {summary.html}")
    if summary.timeline_png:
        console.print(f"PNG: {summary.timeline_png}")
