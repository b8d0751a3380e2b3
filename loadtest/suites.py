"""The benchmark's measurements, one function per question the issue asks.

- :func:`three_way`: the same load to the upstream directly, through this gateway and through
  LiteLLM (both on the server CPU, measured in turn): latency at fixed rates (full
  and streamed answers), maximum req/s (closed loop), CPU per request, streamed chunks.
- the building blocks the adapter suites (:mod:`loadtest.adapter_suites`) share: the placement,
  the context, a target served for the length of a ``with``, one fixed-rate phase.

Processes come from :mod:`loadtest.procs` and :mod:`loadtest.litellm_proxy`; load from
:mod:`loadtest.openloop`; figures from :mod:`loadtest.stats`. Called by :mod:`loadtest.bench`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Coroutine, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import uvloop

from loadtest.litellm_proxy import start_litellm
from loadtest.openloop import PhaseResult, Target, build_requests, closed_loop, fixed_rate
from loadtest.procs import GatewayOptions, Service, start_gateway
from loadtest.sampling import AdapterMix, AdapterSampler
from loadtest.stats import PhaseStats, summarize
from loadtest.workload import Workload

DIRECT, GATEWAY, LITELLM = "direct", "gateway", "litellm"
FULL, STREAM = "full", "stream"


@dataclass(frozen=True, slots=True)
class Placement:
    """CPUs of the server under test (gateway or LiteLLM) and of everything else."""

    server: frozenset[int]
    others: frozenset[int]

    @classmethod
    def detect(cls) -> Placement:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return cls(frozenset(cpus), frozenset(cpus))
        return cls(frozenset(cpus[:1]), frozenset(cpus[1:]))

    def describe(self) -> str:
        server = ",".join(map(str, sorted(self.server)))
        others = ",".join(map(str, sorted(self.others)))
        return (
            f"gateway and LiteLLM proxy on CPU {server} (one measured at a time, the other "
            f"idle); load generator, fake upstream and vLLM on CPU {others} "
            "(os.sched_setaffinity before exec)"
        )


@dataclass(frozen=True, slots=True)
class LoadPlan:
    rates: tuple[float, ...] = (50.0, 100.0, 200.0)
    modes: tuple[str, ...] = (FULL, STREAM)
    duration_s: float = 10.0
    max_rps_duration_s: float = 10.0
    max_rps_concurrency: int = 64
    workload: Workload = field(default_factory=Workload)
    timeout_s: float = 60.0


@dataclass(slots=True)
class BenchContext:
    work_dir: Path
    log_dir: Path
    placement: Placement
    base_dir: Path
    served_name: str
    admin_token: str
    api_key: str
    litellm_venv: Path
    targets: tuple[str, ...] = (DIRECT, GATEWAY, LITELLM)
    notes: list[str] = field(default_factory=list)

    def gateway_options(
        self, engine_url: str, *, max_loras: int, max_cpu_loras: int, data_name: str
    ) -> GatewayOptions:
        data_dir = self.work_dir / "gateway-data" / data_name
        shutil.rmtree(data_dir, ignore_errors=True)
        return GatewayOptions(
            engine_url=engine_url,
            data_dir=data_dir,
            base_model=str(self.base_dir),
            served_name=self.served_name,
            admin_token=self.admin_token,
            max_loras=max_loras,
            max_cpu_loras=max_cpu_loras,
            adapter_roots=(self.adapters_dir,),
            api_key=self.api_key,
        )

    @property
    def adapters_dir(self) -> Path:
        return self.work_dir / "adapters"


@dataclass(slots=True)
class SuiteResult:
    upstream: str
    latency: list[PhaseStats] = field(default_factory=list)
    max_rps: list[PhaseStats] = field(default_factory=list)


def run_phase(coro: Coroutine[Any, Any, PhaseResult]) -> PhaseResult:
    return uvloop.run(coro)


def make_requests(
    workload: Workload,
    names: list[str],
    count: int,
    *,
    seed: int,
    distribution: str = "uniform",
    zipf_s: float = 1.0,
) -> list[tuple[str, bytes]]:
    mix = AdapterMix.build(names, distribution, zipf_s=zipf_s)
    return build_requests(workload, AdapterSampler(mix, seed), count, seed=seed)


@contextmanager
def serving(
    name: str,
    ctx: BenchContext,
    upstream: Service,
    *,
    models: list[str],
    max_loras: int,
    max_cpu_loras: int,
    data_name: str,
) -> Iterator[tuple[Target, Service | None]]:
    """The target ``name`` in front of ``upstream``, started on the server CPU and stopped
    afterwards; yields it with its process (None for direct)."""
    service: Service | None = None
    if name == DIRECT:
        target = Target(DIRECT, upstream.url)
    elif name == GATEWAY:
        options = ctx.gateway_options(
            upstream.url, max_loras=max_loras, max_cpu_loras=max_cpu_loras, data_name=data_name
        )
        service = start_gateway(
            options, ctx.log_dir, cpus=ctx.placement.server, name=f"gateway-{data_name}"
        )
        target = Target(GATEWAY, service.url, ctx.api_key)
    elif name == LITELLM:
        service = start_litellm(
            ctx.litellm_venv,
            upstream.url,
            models,
            ctx.api_key,
            ctx.log_dir,
            cpus=ctx.placement.server,
        )
        target = Target(LITELLM, service.url, ctx.api_key)
    else:
        raise ValueError(f"unknown target {name!r}")
    try:
        yield target, service
    finally:
        if service is not None:
            service.stop()


def warm(target: Target, model: str) -> None:
    warm = make_requests(Workload(stream=False, max_tokens=4), [model], 64, seed=99)
    run_phase(closed_loop(target, warm, 4, 0.5, stream=False, warmup_s=0.0))


def fixed_rate_phase(
    target: Target,
    workload: Workload,
    rate: float,
    duration_s: float,
    *,
    names: list[str],
    seed: int,
    distribution: str = "uniform",
    zipf_s: float = 1.0,
    timeout_s: float = 60.0,
    chunk_counter: Callable[[], int] | None = None,
) -> PhaseStats:
    count = max(1, round(rate * duration_s))
    requests = make_requests(
        workload, names, count, seed=seed, distribution=distribution, zipf_s=zipf_s
    )
    before = chunk_counter() if chunk_counter and workload.stream else None
    result = run_phase(
        fixed_rate(target, requests, rate, stream=workload.stream, timeout_s=timeout_s)
    )
    chunks_in = chunk_counter() - before if chunk_counter and before is not None else None
    return summarize(
        result,
        target=target.name,
        mode=STREAM if workload.stream else FULL,
        offered_rps=rate,
        chunks_in=chunks_in,
    )


def max_rps_phase(
    target: Target, plan: LoadPlan, *, model: str, server: Service | None
) -> PhaseStats:
    requests = make_requests(replace(plan.workload, stream=False), [model], 2048, seed=7)
    cpu_before = server.cpu_seconds() if server is not None else None
    result = run_phase(
        closed_loop(
            target,
            requests,
            plan.max_rps_concurrency,
            plan.max_rps_duration_s,
            stream=False,
            timeout_s=plan.timeout_s,
        )
    )
    cpu = None
    if server is not None and cpu_before is not None:
        cpu = server.cpu_seconds() - cpu_before
    return summarize(result, target=target.name, mode=FULL, offered_rps=None, cpu_s=cpu)


def three_way(
    ctx: BenchContext,
    upstream: Service,
    upstream_kind: str,
    plan: LoadPlan,
    chunk_counter: Callable[[], int] | None,
) -> SuiteResult:
    """Direct, gateway and LiteLLM over one upstream, the same requests to each.

    The targets take turns phase by phase (each rate: direct, gateway, LiteLLM; then each
    maximum), so that a disturbance on the machine falls on all of them rather than on
    whichever ran at that moment. Both proxies stay up on the server CPU meanwhile; the one
    not measured is idle.
    """
    suite = SuiteResult(upstream=upstream_kind)
    model = ctx.served_name
    with ExitStack() as stack:
        served = [
            stack.enter_context(
                serving(
                    name,
                    ctx,
                    upstream,
                    models=[model],
                    max_loras=8,
                    max_cpu_loras=16,
                    data_name=f"{upstream_kind}-three-way",
                )
            )
            for name in ctx.targets
        ]
        for target, _ in served:
            warm(target, model)
        for mode in plan.modes:
            workload = replace(plan.workload, stream=mode == STREAM)
            for rate in plan.rates:
                for target, _ in served:
                    suite.latency.append(
                        fixed_rate_phase(
                            target,
                            workload,
                            rate,
                            plan.duration_s,
                            names=[model],
                            seed=int(rate),
                            timeout_s=plan.timeout_s,
                            chunk_counter=chunk_counter,
                        )
                    )
        for target, server in served:
            suite.max_rps.append(max_rps_phase(target, plan, model=model, server=server))
    return suite
