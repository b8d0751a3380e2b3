"""What keys and limits cost on the gateway's hot path, per request, in-process.

    .venv/bin/python -m loadtest.limiter_cost [--requests 3000] [--redis-url redis://127.0.0.1:6379/0]

Times :meth:`gateway.auth.tenants.Tenants.authenticate`, ``admit`` and the admission's
``finish`` (what a ``/v1`` request pays beyond routing and proxying) with a real SQLite key
store, for: an open gateway, one static key, one virtual key with rpm + tpm + concurrency
limits, and 10,000 such keys used round-robin; with ``limits``' in-memory storage and, given
``--redis-url``, with Redis. Requests go one after another (the added latency of one request,
not a throughput figure); key lookups are warm in the cache (a cold lookup is one indexed
query, at most once per key per cache TTL). Prints p50/p99 in microseconds. The keys are
written in one transaction (:func:`loadtest.limits_suite.seed_keys`). The same question end to
end, through the HTTP server at a fixed rate, is ``python -m loadtest.bench --suites limits``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from pydantic import SecretStr

from gateway.auth.key_store import KeyStore
from gateway.auth.keys import KeyLimits, new_secret
from gateway.auth.limits import KeyLimiter, open_storage
from gateway.auth.tenants import Tenants
from gateway.auth.usage_records import UsageRecorder, UsageStore
from gateway.inference.record import RequestInfo
from loadtest.limits_suite import seed_keys

MODEL = "base-model"
LIMITS = KeyLimits(rpm=10**7, tpm=10**12, max_concurrent=10**5)


def _percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered) * 1e6, p99 * 1e6


async def _measure(tenants: Tenants, headers: list[str | None], requests: int) -> list[float]:
    samples = []
    for i in range(requests):
        started = time.perf_counter()
        principal = await tenants.authenticate(headers[i % len(headers)])
        admission = await tenants.admit(principal, MODEL)
        info = RequestInfo("r", "POST", "/v1/completions", started, model=MODEL)
        info.prompt_tokens, info.completion_tokens = 7, 9
        await admission.finish(info)
        samples.append(time.perf_counter() - started)
    return samples


async def run(requests: int, redis_url: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = KeyStore.open(f"sqlite:///{Path(tmp) / 'registry.db'}")
        usage = UsageRecorder(UsageStore(store.engine))
        secrets = [new_secret() for _ in range(10_000)]
        seed_keys(f"sqlite:///{Path(tmp) / 'registry.db'}", secrets, LIMITS)
        static = "sk-static-" + "x" * 24
        cases: list[tuple[str, Tenants, list[str | None]]] = []
        for backend in ["memory", *(["redis"] if redis_url else [])]:
            storage = open_storage(redis_url if backend == "redis" else None)
            limiter = KeyLimiter(storage)
            keyed = Tenants(store, limiter, usage=usage, cache_ttl_s=3600)
            cases += [
                (f"{backend}: 1 key", keyed, [f"Bearer {secrets[0]}"]),
                (f"{backend}: 10,000 keys", keyed, [f"Bearer {s}" for s in secrets]),
            ]
        empty = KeyStore.open(f"sqlite:///{Path(tmp) / 'empty.db'}")
        cases.insert(0, ("open gateway", Tenants(empty, KeyLimiter(open_storage(None))), [None]))
        cases.insert(
            1,
            (
                "static key",
                Tenants(empty, KeyLimiter(open_storage(None)), [SecretStr(static)]),
                [f"Bearer {static}"],
            ),
        )
        print(f"{'case':<24} {'p50 us':>8} {'p99 us':>8}")
        for name, tenants, headers in cases:
            await _measure(tenants, headers, min(len(headers), 10_000))  # warm the cache
            p50, p99 = _percentiles(await _measure(tenants, headers, requests))
            print(f"{name:<24} {p50:>8.1f} {p99:>8.1f}")
        store.close()
        empty.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--redis-url", default=None)
    args = parser.parse_args()
    asyncio.run(run(args.requests, args.redis_url))


if __name__ == "__main__":
    main()
