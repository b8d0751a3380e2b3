"""``python -m loadtest``: ``run`` (a headless locust run and its summary) and ``bench``.

``python -m loadtest run --host URL --users 16 --duration 30 --rate 50 --stream \\
--adapter-prefix legal --adapter-count 16 --distribution zipf`` runs :mod:`loadtest.locustfile`
(options this command does not know go to the locustfile); ``python -m loadtest bench ...`` is
:mod:`loadtest.bench`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from loadtest.run import LocustRun, print_summary, run_locust


def run_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest run",
        description="Run loadtest/locustfile.py headless; other options go to the locustfile "
        "(see: locust -f loadtest/locustfile.py --help).",
    )
    parser.add_argument("--host", required=True, help="base URL of an OpenAI-compatible server")
    parser.add_argument("-u", "--users", type=int, default=16)
    parser.add_argument("-r", "--spawn-rate", type=float, default=0.0)
    parser.add_argument("-t", "--duration", type=float, default=30.0, help="seconds")
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=Path("results") / f"locust-{dt.datetime.now():%Y%m%d-%H%M%S}",
    )
    parser.add_argument("--name", default="locust", help="file name prefix of the outputs")
    args, workload_args = parser.parse_known_args(argv)
    try:
        run = LocustRun(
            host=args.host,
            results_dir=args.results_dir,
            users=args.users,
            spawn_rate=args.spawn_rate,
            duration_s=args.duration,
            name=args.name,
            workload_args=workload_args,
        )
    except ValueError as exc:
        parser.error(str(exc))
    summary = run_locust(run)
    print_summary(summary)
    return summary.exit_code


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("run", "bench"):
        print(
            "usage: python -m loadtest {run,bench} [options]  (--help after the command)",
            file=sys.stderr,
        )
        return 2
    if argv[0] == "run":
        return run_command(argv[1:])
    from loadtest import bench

    return bench.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
