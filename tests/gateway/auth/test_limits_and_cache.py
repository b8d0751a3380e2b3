"""The limiter and the key cache in-process: real ``limits`` memory storage, a real SQLite store."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest
from limits.aio.storage import MemoryStorage

from gateway.auth.key_store import KeyStore
from gateway.auth.keys import ALL_MODELS, KeyLimits, VirtualKey
from gateway.auth.limits import (
    KeyLimiter,
    Subject,
    _next_month,
    format_reset,
    open_storage,
    storage_uri,
)
from gateway.auth.tenants import Tenants
from gateway.errors import RateLimitError
from gateway.inference.record import RequestInfo


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.02, "20ms"), (0.0, "0ms"), (1.5, "1.5s"), (59.0, "59s"), (360, "6m0s"), (3700, "1h1m40s")],
)
def test_reset_durations_are_spelled_like_openai(seconds: float, text: str) -> None:
    assert format_reset(seconds) == text


def test_storage_is_memory_unless_a_redis_url_is_given() -> None:
    assert storage_uri(None) == "async+memory://"
    assert storage_uri("redis://127.0.0.1:6390/2") == "async+redis://127.0.0.1:6390/2"
    with pytest.raises(ValueError, match="redis://"):
        storage_uri("http://127.0.0.1:6390")


def test_monthly_budget_renews_on_the_first_of_the_next_month() -> None:
    assert _next_month(datetime(2026, 12, 31, 23, 59, tzinfo=UTC)) == datetime(
        2027, 1, 1, tzinfo=UTC
    )
    assert _next_month(datetime(2027, 1, 31, tzinfo=UTC)) == datetime(2027, 2, 1, tzinfo=UTC)


def _key(**limits: int) -> VirtualKey:
    now = datetime.now(UTC)
    return VirtualKey(
        id="key_test" + "".join(f"{k}{v}" for k, v in limits.items()),
        name="t",
        prefix="lgw-test",
        models=ALL_MODELS,
        limits=KeyLimits(**limits),
        created_at=now,
        updated_at=now,
    )


def _info(prompt: int | None, completion: int | None) -> RequestInfo:
    return RequestInfo(
        "r", "POST", "/v1/completions", 0.0, prompt_tokens=prompt, completion_tokens=completion
    )


async def test_a_request_refused_for_concurrency_costs_no_request() -> None:
    limiter = KeyLimiter(open_storage(None))
    key = _key(rpm=5, max_concurrent=1)
    first = await limiter.admit([Subject.of_key(key)])
    assert first.headers["x-ratelimit-remaining-requests"] == "4"
    with pytest.raises(RateLimitError) as caught:
        await limiter.admit([Subject.of_key(key)])
    assert caught.value.headers["x-ratelimit-remaining-requests"] == "4"
    await first.finish(_info(3, 4))
    second = await limiter.admit([Subject.of_key(key)])
    assert second.headers["x-ratelimit-remaining-requests"] == "3"
    await second.finish(_info(None, None))
    await second.finish(_info(None, None))  # once only: the slot is not freed twice
    third = await limiter.admit([Subject.of_key(key)])
    with pytest.raises(RateLimitError):
        await limiter.admit([Subject.of_key(key)])
    await third.finish(_info(0, 0))


async def test_key_lookups_are_cached_for_the_ttl(tmp_path: Path) -> None:
    store = KeyStore.open(f"sqlite:///{tmp_path / 'registry.db'}")
    issued = store.create("cached", models=ALL_MODELS, limits=KeyLimits())
    calls = 0
    lookup = store.by_hash

    def counting(secret_hash: str) -> VirtualKey | None:
        nonlocal calls
        calls += 1
        return lookup(secret_hash)

    store.by_hash = counting  # type: ignore[method-assign]
    now = [100.0]
    tenants = Tenants(store, KeyLimiter(open_storage(None)), cache_ttl_s=1.0, clock=lambda: now[0])
    for _ in range(100):
        principal = await tenants.authenticate(f"Bearer {issued.secret}")
        assert principal.key is not None and principal.key.id == issued.key.id
    assert calls == 1
    now[0] += 1.01
    await tenants.authenticate(f"Bearer {issued.secret}")
    assert calls == 2
    store.close()


async def test_in_process_counters_are_not_all_swept_after_every_increment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``limits``' memory storage sweeps every counter for expiry after each increment (when its
    previous sweep is done): the CPU per request grew with the counters alive (10,000 keys'
    budget and concurrency counters: about 4 ms a request on the benchmark machine). The
    storage the gateway opens sweeps at most once per interval; expiry stays exact (a read
    drops an expired counter)."""
    sweeps = 0
    sweep = MemoryStorage._MemoryStorage__expire_events  # type: ignore[attr-defined]

    async def counted(self: MemoryStorage) -> None:
        nonlocal sweeps
        sweeps += 1
        await sweep(self)

    monkeypatch.setattr(MemoryStorage, "_MemoryStorage__expire_events", counted)
    storage = open_storage(None)
    for i in range(200):
        await storage.incr(f"key-{i}", 3600, 1)
        await asyncio.sleep(0)  # the server's loop runs the sweep task between requests
    assert sweeps <= 2, f"{sweeps} sweeps for 200 increments"
    await storage.incr("short", 0.05, 1)
    await asyncio.sleep(0.1)
    assert await storage.get("short") == 0  # expired without a sweep
    assert await storage.incr("short", 60, 1) == 1
