"""The limiter's cost on the gateway's hot path (``--suites limits`` of :mod:`loadtest.bench`).

The gateway over the FAKE upstream (no model: only the gateway's own cost shows) at one fixed
rate, full answers, in five cases measured in turn within each repetition:

* ``no keys``: an open gateway (no static key, no virtual key): the baseline;
* ``1 key, memory``: every request with the same virtual key, counted in ``limits``' in-process
  storage;
* ``N keys, memory``: the requests spread round-robin over ``N`` virtual keys (10,000 by
  default). At 200 req/s each key comes back every 50 s, long after the key cache's 1 s TTL, so
  every request pays a cold key lookup (one indexed query in a thread) and its own counters;
* the same two with the counters in Redis (``LORA_GATEWAY_REDIS_URL``): a throwaway
  ``redis-server`` started here, or the rows say ``skipped`` when it is not on PATH.

Every key carries every limit (requests and tokens per minute, concurrency, daily and monthly
token budgets), set high enough never to refuse: the most work the limiter does per request.
The keys are written straight into each gateway's registry database before it starts (one
transaction; the admin API's one-key-per-call path would take minutes for 10,000 and is not
what is measured), the same rows ``lora-gateway keys create`` makes. One gateway per storage
serves both key cases. The gateway's CPU time per request (its process tree's user + system
time over the phase) says how much of its core a case takes. "Added" is a case's percentile
minus the no-keys percentile measured in the same repetition. Called by
:mod:`loadtest.bench`; rows for :mod:`loadtest.report`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy import insert

from adapters.db import utcnow
from gateway.auth.key_store import ApiKeyRow, KeyStore
from gateway.auth.keys import (
    ALL_MODELS,
    KeyLimits,
    hash_secret,
    new_key_id,
    new_secret,
    visible_prefix,
)
from loadtest.openloop import Target
from loadtest.procs import Service, start_gateway, start_redis
from loadtest.stats import PhaseStats, added, ratio
from loadtest.suites import FULL, BenchContext, fixed_rate_phase, warm
from loadtest.workload import Workload

NO_KEYS = "no keys"
MEMORY, REDIS = "memory", "redis"
#: Every limit a key can have, none of which this load reaches.
BENCH_LIMITS = KeyLimits(
    rpm=10**8, tpm=10**12, max_concurrent=10**5, daily_tokens=10**15, monthly_tokens=10**15
)


@dataclass(frozen=True, slots=True)
class LimitsPoint:
    """One case of one repetition; ``stats`` None when the case was skipped (``note`` says why)."""

    case: str
    keys: int
    storage: str
    stats: PhaseStats | None
    note: str = ""


def case_name(keys: int, storage: str) -> str:
    return NO_KEYS if keys == 0 else f"{keys:,} key{'s' if keys > 1 else ''}, {storage}"


def default_database(data_dir: Path) -> str:
    """The registry a gateway with this data dir opens (no ``LORA_GATEWAY_DATABASE_URL``)."""
    return f"sqlite:///{data_dir / 'registry.db'}"


def seed_keys(database_url: str, secrets: list[str], limits: KeyLimits = BENCH_LIMITS) -> None:
    """Write one virtual key per secret (named ``bench-<i>``, every model) in one transaction."""
    store = KeyStore.open(database_url)
    try:
        now = utcnow()
        rows: list[dict[str, Any]] = [
            {
                "id": new_key_id(),
                "name": f"bench-{index}",
                "prefix": visible_prefix(secret),
                "secret_hash": hash_secret(secret),
                "models": list(ALL_MODELS),
                "created_at": now,
                "updated_at": now,
                **asdict(limits),
            }
            for index, secret in enumerate(secrets)
        ]
        with store.engine.begin() as connection:
            connection.execute(insert(ApiKeyRow), rows)
    finally:
        store.close()


def _start(
    ctx: BenchContext,
    fake: Service,
    *,
    storage: str | None,
    secrets: list[str],
    redis_url: str | None,
) -> Service:
    name = f"limits-{storage or 'open'}"
    options = ctx.gateway_options(fake.url, max_loras=8, max_cpu_loras=16, data_name=name)
    options = replace(options, api_key="", redis_url=redis_url)
    if secrets:
        options.data_dir.mkdir(parents=True, exist_ok=True)
        seed_keys(default_database(options.data_dir), secrets)
        options = replace(options, probe_key=secrets[0])
    return start_gateway(options, ctx.log_dir, cpus=ctx.placement.server, name=f"gateway-{name}")


def limiter_cost(
    ctx: BenchContext,
    fake: Service,
    *,
    keys: int,
    rate: float,
    duration_s: float,
    repetitions: int,
    workload: Workload,
) -> list[list[LimitsPoint]]:
    """The five cases, ``repetitions`` times (one list of points per repetition)."""
    secrets = [new_secret() for _ in range(keys)]
    workload = replace(workload, stream=False)
    model = ctx.served_name
    services: list[Service] = []
    redis: Service | None = None
    try:
        open_gateway = _start(ctx, fake, storage=None, secrets=[], redis_url=None)
        services.append(open_gateway)
        cases: list[tuple[int, str, Target | None, Service | None, str]] = [
            (0, "-", Target(NO_KEYS, open_gateway.url), open_gateway, "")
        ]
        redis = start_redis(ctx.log_dir, cpus=ctx.placement.others)
        for storage in (MEMORY, REDIS):
            if storage == REDIS and redis is None:
                for count in (1, keys):
                    cases.append((count, storage, None, None, "skipped: redis-server not on PATH"))
                continue
            url = redis.url if storage == REDIS and redis is not None else None
            gateway = _start(ctx, fake, storage=storage, secrets=secrets, redis_url=url)
            services.append(gateway)
            one = case_name(1, storage)
            cases.append((1, storage, Target(one, gateway.url, secrets[0]), gateway, ""))
            many = case_name(keys, storage)
            every = Target(many, gateway.url, api_keys=tuple(secrets))
            cases.append((keys, storage, every, gateway, ""))
        for _, _, target, _, _ in cases:
            if target is not None and not target.api_keys:
                warm(target, model)
        out: list[list[LimitsPoint]] = []
        for repetition in range(repetitions):
            points = []
            for count, storage, target, server, note in cases:
                stats = None
                if target is not None and server is not None:
                    cpu_before = server.cpu_seconds()
                    stats = fixed_rate_phase(
                        target,
                        workload,
                        rate,
                        duration_s,
                        names=[model],
                        seed=repetition,
                    )
                    cpu_ms = (server.cpu_seconds() - cpu_before) * 1e3 / max(1, stats.requests)
                    stats = replace(stats, cpu_ms_per_request=cpu_ms)
                points.append(LimitsPoint(case_name(count, storage), count, storage, stats, note))
            out.append(points)
        return out
    finally:
        for service in services:
            service.stop()
        if redis is not None:
            redis.stop()


def limits_rows(points: list[LimitsPoint]) -> list[dict[str, Any]]:
    """One repetition's rows: each case's p50/p99 and what it adds to the no-keys case."""
    base = next((p.stats for p in points if p.keys == 0), None)
    usable = base is not None and not base.overloaded
    base_p50 = base.p50_ms if usable and base is not None else None
    base_p99 = base.p99_ms if usable and base is not None else None
    rows = []
    for point in points:
        stats = point.stats if point.stats is not None and not point.stats.overloaded else None
        p50 = stats.p50_ms if stats is not None else None
        p99 = stats.p99_ms if stats is not None else None
        rows.append(
            {
                "case": point.case,
                "keys": point.keys,
                "storage": point.storage,
                "mode": FULL,
                "rate": point.stats.offered_rps if point.stats is not None else None,
                "p50_ms": p50,
                "p99_ms": p99,
                "added_p50_ms": None if point.keys == 0 else added(p50, base_p50),
                "added_p99_ms": None if point.keys == 0 else added(p99, base_p99),
                "over_no_keys_p50": None if point.keys == 0 else ratio(p50, base_p50),
                "over_no_keys_p99": None if point.keys == 0 else ratio(p99, base_p99),
                "cpu_ms_per_request": point.stats.cpu_ms_per_request
                if point.stats is not None
                else None,
                "errors": point.stats.errors if point.stats is not None else 0,
                "overloaded": [point.case]
                if point.stats is not None and point.stats.overloaded
                else [],
                "note": point.note,
            }
        )
    return rows
