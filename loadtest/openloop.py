"""The benchmark's load generators: fixed-rate open loop, and closed loop for maximum req/s.

Lean asyncio + aiohttp on uvloop, one process, bodies encoded before the clock starts.

- :func:`fixed_rate`: request *i* is sent at ``t0 + i / rate`` whatever the earlier ones are
  doing (open loop, so a slow server cannot slow the offered load down: no coordinated
  omission). Latency is timed per request from its send to its last byte; how late each send
  was against its schedule is kept too, so a run can show the generator kept up.
- :func:`closed_loop`: ``concurrency`` workers send back to back; completed requests per second
  after a warm-up is the server's maximum throughput (if the generator is not the bottleneck:
  the benchmark measures the generator against the fake upstream directly to show that).

Used by :mod:`loadtest.bench`; streamed answers are accounted by :class:`SseMeter`.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from loadtest.sampling import AdapterSampler
from loadtest.workload import SseMeter, Workload

MAX_RATE = 20_000.0
MAX_CONCURRENCY = 4096


@dataclass(frozen=True, slots=True)
class Target:
    """An OpenAI-compatible server the generator talks to."""

    name: str
    base_url: str
    api_key: str | None = None
    #: Several client keys: request *i* of a phase sends ``api_keys[i % len(api_keys)]``
    #: (instead of ``api_key``), to spread a load over many keys.
    api_keys: tuple[str, ...] = ()

    @property
    def headers(self) -> dict[str, str]:
        # identity: no server compresses answers for one client and not for another.
        headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def headers_for(self, index: int) -> dict[str, str]:
        """The headers of the phase's request number ``index``."""
        if not self.api_keys:
            return self.headers
        return {
            "Content-Type": "application/json",
            "Accept-Encoding": "identity",
            "Authorization": f"Bearer {self.api_keys[index % len(self.api_keys)]}",
        }


@dataclass(frozen=True, slots=True)
class Outcome:
    """One request: when it was due, how late it left, how long it took, what came back."""

    due_s: float
    lag_s: float
    latency_s: float
    ttft_s: float | None
    chunks: int
    status: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None


@dataclass(slots=True)
class PhaseResult:
    outcomes: list[Outcome] = field(default_factory=list)
    elapsed_s: float = 0.0
    #: The open loop stopped early: the server fell behind the offered rate.
    overloaded: bool = False

    @property
    def ok(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.ok]

    @property
    def errors(self) -> int:
        return sum(1 for o in self.outcomes if not o.ok)


Request = tuple[str, bytes]


def build_requests(
    workload: Workload, sampler: AdapterSampler, count: int, seed: int = 0
) -> list[Request]:
    rng = random.Random(seed)
    requests = []
    for _ in range(count):
        _, path, body = workload.request(sampler.sample(), rng)
        requests.append((path, json.dumps(body).encode()))
    return requests


async def _send(
    session: aiohttp.ClientSession,
    target: Target,
    request: Request,
    stream: bool,
    due_s: float,
    lag_s: float,
    index: int = 0,
) -> Outcome:
    path, body = request
    meter = SseMeter()
    try:
        async with session.post(
            target.base_url + path, data=body, headers=target.headers_for(index)
        ) as response:
            if stream and response.status == 200:
                async for piece in response.content.iter_any():
                    meter.feed(piece)
            else:
                payload = await response.read()
                if response.status == 200 and b'"choices"' not in payload:
                    meter.error = "answer without choices"
            latency = time.perf_counter() - meter.started
            error = meter.error
            if stream and response.status == 200 and error is None and not meter.done:
                error = "stream ended without [DONE]"
            return Outcome(
                due_s,
                lag_s,
                latency,
                meter.ttft_s,
                meter.chunks,
                response.status,
                error if response.status == 200 else f"HTTP {response.status}",
            )
    except (aiohttp.ClientError, TimeoutError) as exc:
        return Outcome(
            due_s,
            lag_s,
            time.perf_counter() - meter.started,
            None,
            meter.chunks,
            0,
            f"{type(exc).__name__}: {exc}",
        )


def _session(concurrency: int, timeout_s: float) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=concurrency, force_close=False, enable_cleanup_closed=True
    )
    return aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s), auto_decompress=False
    )


async def fixed_rate(
    target: Target,
    requests: list[Request],
    rate: float,
    *,
    stream: bool,
    timeout_s: float = 60.0,
    backlog_limit: int | None = None,
) -> PhaseResult:
    """Send ``requests`` at ``rate`` per second (open loop); returns every outcome.

    A server that cannot keep up makes the backlog grow without bound and its latencies mean
    only "overloaded": once more than ``backlog_limit`` requests (default: one second's worth,
    at least 32) are in flight, no more are sent and the result is marked ``overloaded``.
    """
    if not 0 < rate <= MAX_RATE:
        raise ValueError(f"rate must be in (0, {MAX_RATE}], got {rate}")
    limit = backlog_limit or max(32, round(rate))
    loop = asyncio.get_running_loop()
    result = PhaseResult()
    pending: set[asyncio.Task[Outcome]] = set()
    async with _session(MAX_CONCURRENCY, timeout_s) as session:
        tasks: list[asyncio.Task[Outcome]] = []
        start = loop.time() + 0.05
        wall_start = time.perf_counter() + 0.05
        for index, request in enumerate(requests):
            due = index / rate
            delay = start + due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(pending) >= limit:
                result.overloaded = True
                break
            lag = max(0.0, loop.time() - start - due)
            task = loop.create_task(_send(session, target, request, stream, due, lag, index))
            pending.add(task)
            task.add_done_callback(pending.discard)
            tasks.append(task)
        result.outcomes = list(await asyncio.gather(*tasks))
        result.elapsed_s = time.perf_counter() - wall_start
    return result


async def closed_loop(
    target: Target,
    requests: list[Request],
    concurrency: int,
    duration_s: float,
    *,
    stream: bool,
    warmup_s: float = 1.0,
    timeout_s: float = 60.0,
) -> PhaseResult:
    """``concurrency`` workers back to back for warm-up + duration; keeps what ended after
    the warm-up. Requests are reused round-robin."""
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ValueError(f"concurrency must be 1..{MAX_CONCURRENCY}, got {concurrency}")
    if not requests:
        raise ValueError("closed_loop needs at least one request")
    result = PhaseResult()
    counter = iter(range(1 << 62))
    start = time.perf_counter()
    measure_from = start + warmup_s
    stop_at = measure_from + duration_s

    async def worker(session: aiohttp.ClientSession, keep: Callable[[Outcome], None]) -> None:
        while time.perf_counter() < stop_at:
            index = next(counter)
            request = requests[index % len(requests)]
            outcome = await _send(session, target, request, stream, 0.0, 0.0, index)
            if time.perf_counter() >= measure_from:
                keep(outcome)

    async with _session(concurrency, timeout_s) as session:
        await asyncio.gather(*(worker(session, result.outcomes.append) for _ in range(concurrency)))
    result.elapsed_s = time.perf_counter() - measure_from
    return result
