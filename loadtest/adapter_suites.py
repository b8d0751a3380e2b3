"""The benchmark's adapter questions, both through this gateway only.

- :func:`registry_size`: over the FAKE upstream, the gateway's added latency with 1 registered
  adapter and with 1,000 (all loaded first, so only the registry's size differs).
- :func:`adapter_scaling`: over real vLLM with fewer LoRA slots than adapters, a Zipf mix over
  1, 4, 16, 64 registered adapters: req/s, TTFT, evictions and loads (the gateway's counters).
- :func:`placement`: 2 engines, 16 adapters, 2 slots per engine, Zipf s=1.1, streamed, once per
  placement policy (replicate, affinity) at the same offered load: req/s, TTFT, resident-hit
  ratio, loads, evictions (the gateway's ``lora_gateway_placement_events`` counters).

Adapters are registered through the admin API (:mod:`loadtest.gateway_admin`); building blocks
come from :mod:`loadtest.suites`. Called by :mod:`loadtest.bench`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from loadtest import gateway_admin
from loadtest.adapters_gen import write_adapter_set
from loadtest.openloop import Target, closed_loop
from loadtest.procs import Service, start_gateway
from loadtest.stats import PhaseStats, summarize
from loadtest.suites import (
    DIRECT,
    FULL,
    GATEWAY,
    STREAM,
    BenchContext,
    fixed_rate_phase,
    make_requests,
    run_phase,
    serving,
    warm,
)
from loadtest.workload import Workload


@dataclass(frozen=True, slots=True)
class RegistryPoint:
    label: str
    registered: int
    traffic: str
    stats: PhaseStats


def registry_size(
    ctx: BenchContext,
    fake: Service,
    *,
    rate: float,
    duration_s: float,
    large: int = 1000,
    zipf_s: float = 1.0,
) -> list[RegistryPoint]:
    """Gateway over the FAKE upstream: 1 registered adapter, then ``large``; the direct run
    with the same model names is the baseline. Every adapter is loaded before measuring (the
    gateway's capacity is set above ``large``), so this isolates the registry's size."""
    adapters = write_adapter_set(
        ctx.adapters_dir, ctx.base_dir, base_name=ctx.served_name, prefix="reg", count=large
    )
    names = [name for name, _ in adapters]
    workload = replace(Workload(), stream=False)
    points: list[RegistryPoint] = []
    with serving(
        DIRECT, ctx, fake, models=[], max_loras=1, max_cpu_loras=1, data_name="unused"
    ) as (target, _):
        warm(target, ctx.served_name)
        points.append(
            RegistryPoint(
                "direct",
                0,
                names[0],
                fixed_rate_phase(target, workload, rate, duration_s, names=names[:1], seed=1),
            )
        )
        points.append(
            RegistryPoint(
                "direct",
                0,
                f"zipf over {large}",
                fixed_rate_phase(
                    target,
                    workload,
                    rate,
                    duration_s,
                    names=names,
                    seed=2,
                    distribution="zipf",
                    zipf_s=zipf_s,
                ),
            )
        )
    capacity = min(4096, large + 24)
    with serving(
        GATEWAY,
        ctx,
        fake,
        models=[],
        max_loras=256,
        max_cpu_loras=capacity,
        data_name="registry-size",
    ) as (target, server):
        assert server is not None
        gateway_admin.register_adapters(server.url, ctx.admin_token, adapters[:1], load=True)
        warm(target, names[0])
        points.append(
            RegistryPoint(
                "gateway",
                1,
                names[0],
                fixed_rate_phase(target, workload, rate, duration_s, names=names[:1], seed=1),
            )
        )
        gateway_admin.register_adapters(server.url, ctx.admin_token, adapters[1:], load=True)
        warm(target, names[0])
        points.append(
            RegistryPoint(
                "gateway",
                large,
                names[0],
                fixed_rate_phase(target, workload, rate, duration_s, names=names[:1], seed=1),
            )
        )
        points.append(
            RegistryPoint(
                "gateway",
                large,
                f"zipf over {large}",
                fixed_rate_phase(
                    target,
                    workload,
                    rate,
                    duration_s,
                    names=names,
                    seed=2,
                    distribution="zipf",
                    zipf_s=zipf_s,
                ),
            )
        )
    return points


@dataclass(frozen=True, slots=True)
class ScalingPoint:
    adapters: int
    stats: PhaseStats
    evictions: float
    loads: float


def adapter_scaling(
    ctx: BenchContext,
    vllm: Service,
    *,
    counts: tuple[int, ...],
    max_loras: int,
    max_cpu_loras: int,
    concurrency: int,
    duration_s: float,
    workload: Workload,
    zipf_s: float = 1.1,
) -> list[ScalingPoint]:
    """Gateway over real vLLM with ``max_cpu_loras`` slots: a Zipf mix over N registered
    adapters (registered lazily, loaded on first use, evicted LRU by the gateway)."""
    largest = max(counts)
    adapters = write_adapter_set(
        ctx.adapters_dir, ctx.base_dir, base_name=ctx.served_name, prefix="scale", count=largest
    )
    points: list[ScalingPoint] = []
    with serving(
        GATEWAY,
        ctx,
        vllm,
        models=[],
        max_loras=max_loras,
        max_cpu_loras=max_cpu_loras,
        data_name="adapter-scaling",
    ) as (target, server):
        assert server is not None
        gateway_admin.register_adapters(server.url, ctx.admin_token, adapters, load=False)
        auth = {"Authorization": f"Bearer {ctx.api_key}"}
        for count in counts:
            names = [name for name, _ in adapters[:count]]
            requests = make_requests(
                workload, names, 4096, seed=count, distribution="zipf", zipf_s=zipf_s
            )
            evictions = gateway_admin.counter_total(
                server.url, gateway_admin.EVICTIONS, headers=auth
            )
            loads = gateway_admin.counter_total(server.url, gateway_admin.LOADS, headers=auth)
            result = run_phase(
                closed_loop(
                    target,
                    requests,
                    concurrency,
                    duration_s,
                    stream=workload.stream,
                    warmup_s=0.0,
                    timeout_s=300.0,
                )
            )
            stats = summarize(
                result, target=GATEWAY, mode=STREAM if workload.stream else FULL, offered_rps=None
            )
            points.append(
                ScalingPoint(
                    count,
                    stats,
                    gateway_admin.counter_total(server.url, gateway_admin.EVICTIONS, headers=auth)
                    - evictions,
                    gateway_admin.counter_total(server.url, gateway_admin.LOADS, headers=auth)
                    - loads,
                )
            )
    return points


@dataclass(frozen=True, slots=True)
class PlacementPoint:
    policy: str
    stats: PhaseStats
    resident_hits: float
    resident_misses: float
    loads: float
    evictions: float
    replications: float

    @property
    def hit_ratio(self) -> float | None:
        seen = self.resident_hits + self.resident_misses
        return self.resident_hits / seen if seen else None


POLICIES = ("replicate", "affinity")


def placement(
    ctx: BenchContext,
    engines: list[Service],
    *,
    adapters: int,
    slots: int,
    concurrency: int,
    duration_s: float,
    workload: Workload,
    zipf_s: float = 1.1,
) -> list[PlacementPoint]:
    """The gateway in front of ``engines`` (2 in the README's run) with ``slots`` adapter slots
    each, once per placement policy: the same Zipf(``zipf_s``) request sequence over
    ``adapters`` registered adapters at the same closed-loop concurrency (the same offered load),
    streamed. Each policy gets a fresh gateway (and the engines' adapters unloaded by it)."""
    sets = write_adapter_set(
        ctx.adapters_dir, ctx.base_dir, base_name=ctx.served_name, prefix="place", count=adapters
    )
    names = [name for name, _ in sets]
    requests = make_requests(workload, names, 8192, seed=11, distribution="zipf", zipf_s=zipf_s)
    points: list[PlacementPoint] = []
    for policy in POLICIES:
        options = replace(
            ctx.gateway_options(
                engines[0].url,
                max_loras=slots,
                max_cpu_loras=slots,
                data_name=f"placement-{policy}",
            ),
            more_engine_urls=tuple(e.url for e in engines[1:]),
            placement=policy,
        )
        server = start_gateway(
            options, ctx.log_dir, cpus=ctx.placement.server, name=f"gateway-placement-{policy}"
        )
        try:
            gateway_admin.register_adapters(server.url, ctx.admin_token, sets, load=False)
            target = Target(GATEWAY, server.url, ctx.api_key)
            auth = {"Authorization": f"Bearer {ctx.api_key}"}
            before = gateway_admin.placement_totals(server.url, headers=auth)
            result = run_phase(
                closed_loop(
                    target,
                    requests,
                    concurrency,
                    duration_s,
                    stream=workload.stream,
                    warmup_s=0.0,
                    timeout_s=300.0,
                )
            )
            after = gateway_admin.placement_totals(server.url, headers=auth)
        finally:
            server.stop()
        delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
        points.append(
            PlacementPoint(
                policy,
                summarize(
                    result,
                    target=GATEWAY,
                    mode=STREAM if workload.stream else FULL,
                    offered_rps=None,
                ),
                resident_hits=delta.get("resident_hit", 0.0),
                resident_misses=delta.get("resident_miss", 0.0),
                loads=delta.get("load", 0.0),
                evictions=delta.get("eviction", 0.0),
                replications=delta.get("replication", 0.0),
            )
        )
    return points


def placement_ratio(points: list[PlacementPoint]) -> float | None:
    """affinity req/s / replicate req/s."""
    by = {p.policy: p.stats.achieved_rps for p in points}
    if not by.get("replicate") or "affinity" not in by:
        return None
    return by["affinity"] / by["replicate"]
