"""``python -m loadtest.cpu_profile``: the gateway's CPU per request over the fake upstream, and
where it goes.

A short measurement for whoever changes the request path (well under a minute), not the bench:
the gateway (``lora-gateway serve``, a static API key as in the bench) in front of the FAKE vLLM
(:mod:`loadtest.fake_vllm`), one closed-loop phase per mode (full answers, streams). Each phase
reports the gateway process's CPU time (user + system, from ``/proc``) divided by the requests
it answered: unlike wall-clock req/s, that figure barely moves when other processes share the
machine. With ``--py-spy DIR`` every phase is also sampled by py-spy (a dev dependency; root or
``ptrace`` rights needed) and the top functions by own and by inclusive samples are printed,
the collapsed stacks kept in ``DIR/<mode>.txt``.

Placement as in the bench (:class:`loadtest.suites.Placement`): the gateway on the first CPU,
this process and the fake on the others; with ``--workers N`` (``serve --workers``) the gateway
is not pinned and its CPU time is its whole process tree's.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from loadtest import suites
from loadtest.bench import REPO, prepare_base
from loadtest.openloop import Target, closed_loop
from loadtest.procs import GatewayOptions, Service, start_fake_vllm, start_gateway
from loadtest.workload import Workload

MODES = (suites.FULL, suites.STREAM)
#: Frames under which everything runs (the command line, the event loop, threads): left out of
#: the inclusive list, where they would only fill the top rows.
SPINE = (
    "typer/",
    "click/",
    "asyncio/runners.py",
    "asyncio/base_events.py",
    "asyncio/events.py",
    "threading.py",
    "gateway/cli.py",
    "gateway/commands/serve.py",
    "(lora-gateway)",
)


@dataclass(frozen=True, slots=True)
class PhaseCpu:
    mode: str
    requests: int
    failed: int
    elapsed_s: float
    cpu_s: float

    @property
    def cpu_ms_per_request(self) -> float:
        return 1000.0 * self.cpu_s / max(1, self.requests)

    def line(self) -> str:
        return (
            f"{self.mode:6} {self.requests:6d} requests ({self.failed} failed) in "
            f"{self.elapsed_s:5.1f} s: {self.requests / self.elapsed_s:7.0f} req/s, "
            f"gateway CPU {self.cpu_s:6.2f} s = {self.cpu_ms_per_request:.3f} ms/request"
        )


def top_functions(collapsed: Path, count: int = 25) -> tuple[list[str], list[str]]:
    """Own and inclusive sample shares per function from py-spy's ``--format raw`` output
    (one ``frame;frame;...;leaf N`` line per stack); the inclusive list without :data:`SPINE`.
    Under uvloop a resumed coroutine's stack starts at its own frame (the loop is C code), so
    inclusive shares count those partial stacks: read them as lower bounds."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack or not samples.isdigit():
            continue
        n = int(samples)
        total += n
        frames = [_short(frame) for frame in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            if not any(marker in frame for marker in SPINE):
                inclusive[frame] += n
    total = max(1, total)

    def rows(counter: Counter[str]) -> list[str]:
        return [f"{100 * n / total:5.1f}%  {name}" for name, n in counter.most_common(count)]

    return rows(own), rows(inclusive)


def _short(frame: str) -> str:
    """``func (/long/path/site-packages/pkg/mod.py:12)`` -> ``func (pkg/mod.py)``."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", str(REPO) + "/", "/lib/python3"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{name} ({where})"


def run_phase(
    gateway: Service,
    target: Target,
    model: str,
    mode: str,
    args: argparse.Namespace,
) -> PhaseCpu:
    workload = Workload(stream=mode == suites.STREAM, max_tokens=args.max_tokens)
    requests = suites.make_requests(workload, [model], 2048, seed=7)
    spy: subprocess.Popen[bytes] | None = None
    if args.py_spy is not None:
        args.py_spy.mkdir(parents=True, exist_ok=True)
        spy = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("py-spy")),
                "record",
                "--pid",
                str(gateway.process.pid),
                "--format",
                "raw",
                "--rate",
                "250",
                "--nonblocking",
                "--duration",
                str(int(args.duration)),
                "-o",
                str(args.py_spy / f"{mode}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    before = gateway.cpu_seconds()
    result = suites.run_phase(
        closed_loop(
            target, requests, args.concurrency, args.duration, stream=workload.stream, warmup_s=0
        )
    )
    cpu = gateway.cpu_seconds() - before
    if spy is not None:
        spy.wait(timeout=60)
    failed = sum(1 for outcome in result.outcomes if outcome.error is not None)
    return PhaseCpu(mode, len(result.outcomes), failed, result.elapsed_s, cpu)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.cpu_profile", description=__doc__)
    p.add_argument("--work-dir", type=Path, default=REPO / ".bench" / "work")
    p.add_argument("--base-model", default="tiny")
    p.add_argument("--modes", default="full,stream")
    p.add_argument("--duration", type=float, default=8.0, help="seconds per phase")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--chunks", type=int, default=16, help="token chunks the fake streams")
    p.add_argument("--py-spy", type=Path, default=None, metavar="DIR")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="serve --workers; above 1 the gateway is not pinned (it may use every CPU) and its "
        "CPU time is the whole process tree's",
    )
    args = p.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if set(modes) - set(MODES) or not 1 <= args.duration <= 60 or not 1 <= args.workers <= 8:
        p.error("modes are full and stream; --duration 1..60; --workers 1..8")

    placement = suites.Placement.detect()
    os.sched_setaffinity(0, placement.others)
    work = args.work_dir.resolve()
    base_dir = prepare_base(argparse.Namespace(base_model=args.base_model, work_dir=work))
    log_dir = work / "cpu-profile-logs"
    data_dir = work / "gateway-data" / "cpu-profile"
    shutil.rmtree(data_dir, ignore_errors=True)
    api_key = "sk-profile-" + secrets.token_hex(16)
    model = base_dir.name
    fake = start_fake_vllm(log_dir, model=model, chunks=args.chunks, cpus=placement.others)
    try:
        options = GatewayOptions(
            engine_url=fake.url,
            data_dir=data_dir,
            base_model=str(base_dir),
            served_name=model,
            admin_token=secrets.token_urlsafe(24),
            max_loras=8,
            max_cpu_loras=16,
            api_key=api_key,
            workers=args.workers,
        )
        cpus = placement.server if args.workers == 1 else None
        gateway = start_gateway(options, log_dir, cpus=cpus, name="gateway-profile")
        try:
            target = Target(suites.GATEWAY, gateway.url, api_key)
            suites.warm(target, model)
            for mode in modes:
                phase = run_phase(gateway, target, model, mode, args)
                print(phase.line(), flush=True)
                if args.py_spy is not None and (args.py_spy / f"{mode}.txt").is_file():
                    own, inclusive = top_functions(args.py_spy / f"{mode}.txt")
                    print(f"  top own samples ({mode}):", *own, sep="\n    ")
                    print(f"  top inclusive samples ({mode}):", *inclusive, sep="\n    ")
        finally:
            gateway.stop()
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
