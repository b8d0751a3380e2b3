"""Two gateway replicas (processes) sharing one PostgreSQL registry, in front of two real vLLM
engines (tiny model, 2 adapter slots each): issue 11's "Tests".

* Zipf traffic (official ``openai`` SDK) through both replicas for 60 s while an admin loop
  registers versions, restores, pins, unpins, deletes and registers new names through
  alternating replicas: zero failed requests (a deleted name's 404 ``model_not_found`` aside),
  no engine ever holds more adapters than its slots (sampled from the engines themselves every
  0.5 s), and at the end every registered adapter answers on both replicas.
* A change made through one replica is served by the other within 2 s: a registration, a
  deletion (404) and a restore (the restored version's greedy text).
* A replica killed with SIGKILL: the other keeps serving every adapter; every registration made
  before the kill is in its admin list.
* An engine killed with SIGKILL during traffic: requests started after the kill all succeed
  (on the other engine); its supervisor restarts it and it rejoins (adapters load on it again).

Engines and the PostgreSQL server are shared by the module (:mod:`tests.support.replicas`);
each test gets a new database, data dir and pair of gateway processes. Takes both cores for
about four minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest
import pytest_asyncio

from adapters.errors import AdapterError
from gateway.settings import GatewaySettings
from loadtest.adapters_gen import write_random_lora
from tests.integration.conftest import ENGINE_READY_TIMEOUT_S
from tests.integration.registry_gateway import ADAPTER_SCALE
from tests.support.postgres import PostgresServer
from tests.support.replicas import (
    EnginePair,
    GatewayReplica,
    ReplicaCluster,
    engine_pair,
    replica_cluster,
)

pytestmark = [pytest.mark.integration]

SLOTS_PER_ENGINE = 2
ZIPF_S = 1.1
#: The issue's bound on how long a change made through one replica takes to reach the others.
PROPAGATION_S = 2.0
PROMPT = "Hello"
MAX_TOKENS = 4
CHURN_TRAFFIC_S = 60.0
CLIENTS_IN_FLIGHT = 5


@pytest.fixture(scope="module")
def replica_settings(
    engine_settings: GatewaySettings, tmp_path_factory: pytest.TempPathFactory
) -> GatewaySettings:
    return engine_settings.model_copy(
        update={
            "data_dir": tmp_path_factory.mktemp("replica-engines"),
            "max_loras": SLOTS_PER_ENGINE,
            "max_cpu_loras": SLOTS_PER_ENGINE,
        }
    )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def engines(replica_settings: GatewaySettings) -> AsyncIterator[EnginePair]:
    async with engine_pair(replica_settings, ready_timeout_s=ENGINE_READY_TIMEOUT_S) as pair:
        yield pair


@pytest_asyncio.fixture(loop_scope="session")
async def cluster(
    replica_settings: GatewaySettings,
    engines: EnginePair,
    postgres_server: PostgresServer,
    tmp_path: Path,
) -> AsyncIterator[ReplicaCluster]:
    for engine in engines.engines:  # a test before may have killed one
        await engine.wait_ready(ENGINE_READY_TIMEOUT_S)
    database_url = postgres_server.new_database("replicas")
    async with replica_cluster(replica_settings, engines, database_url, tmp_path) as made:
        yield made


# --- helpers -----------------------------------------------------------------------------------


class Adapters:
    """Writes seeded random LoRAs for the tiny model into the shared data dir's adapters/."""

    def __init__(self, cluster: ReplicaCluster, tiny_model_dir: Path) -> None:
        self._root = cluster.data_dir / "adapters"
        self._base = tiny_model_dir
        self._seeds = itertools.count(1000)

    def write(self, name: str) -> Path:
        seed = next(self._seeds)
        return write_random_lora(
            self._root / f"{name}-{seed}", self._base, rank=8, seed=seed, scale=ADAPTER_SCALE
        )


async def admin_call(replica: GatewayReplica, method: str, *args: Any, **kwargs: Any) -> Any:
    """``AdminClient.<method>(*args, **kwargs)`` through ``replica``, off the loop (the client
    is synchronous)."""

    def run() -> Any:
        with replica.admin() as admin:
            return getattr(admin, method)(*args, **kwargs)

    try:
        return await asyncio.to_thread(run)
    except AdapterError as exc:
        shown = ", ".join([*(repr(a) for a in args), *(f"{k}={v!r}" for k, v in kwargs.items())])
        raise AssertionError(f"admin {method}({shown}) through {replica.name}: {exc}") from exc


async def complete(sdk: openai.AsyncOpenAI, model: str, *, stream: bool = False) -> str:
    """A greedy completion of ``model``; its text. Raises the SDK's error on any failure."""
    if stream:
        chunks = await sdk.completions.create(
            model=model, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0.0, stream=True
        )
        parts = []
        async for chunk in chunks:
            assert chunk.model == model
            parts.extend(choice.text for choice in chunk.choices)
        return "".join(parts)
    answer = await sdk.completions.create(
        model=model, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0.0
    )
    assert answer.model == model
    return answer.choices[0].text


def zipf_weights(count: int) -> list[float]:
    return [1.0 / (rank**ZIPF_S) for rank in range(1, count + 1)]


@dataclass
class Outcome:
    replica: str
    model: str
    started: float
    ended: float
    error: BaseException | None = None

    @property
    def not_found(self) -> bool:
        return isinstance(self.error, openai.NotFoundError) and self.error.code == "model_not_found"


@dataclass
class Traffic:
    """Zipf-distributed requests over ``names`` (rank order) through every replica."""

    replicas: Sequence[GatewayReplica]
    names: list[str]
    seed: int = 7
    outcomes: list[Outcome] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, workers: int = CLIENTS_IN_FLIGHT) -> None:
        clients = [(replica.name, replica.openai()) for replica in self.replicas]
        await asyncio.gather(*(self._worker(i, clients) for i in range(workers)))

    async def _worker(self, index: int, clients: Sequence[tuple[str, openai.AsyncOpenAI]]) -> None:
        rng = random.Random(self.seed * 1000 + index)
        for turn in itertools.count(index):
            if self.stop.is_set():
                return
            names = list(self.names)
            if not names:
                await asyncio.sleep(0.1)
                continue
            model = rng.choices(names, weights=zipf_weights(len(names)))[0]
            replica, sdk = clients[turn % len(clients)]
            outcome = Outcome(replica, model, time.monotonic(), 0.0)
            try:
                await complete(sdk, model, stream=turn % 2 == 1)
            except (openai.APIError, AssertionError) as exc:
                outcome.error = exc
            outcome.ended = time.monotonic()
            self.outcomes.append(outcome)

    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.error is not None]


@dataclass
class CapacitySampler:
    """Every ``interval_s``, what each engine itself says it holds (its ``GET /v1/models``)."""

    engines: EnginePair
    interval_s: float = 0.5
    most: Counter[str] = field(default_factory=Counter)
    samples: int = 0
    over: list[tuple[str, list[str]]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        while not self.stop.is_set():
            for engine in self.engines.engines:
                try:
                    held = await self.engines.loaded_adapters(engine, timeout_s=2.0)
                except Exception:  # an engine that is down holds nothing
                    continue
                self.samples += 1
                self.most[engine.name] = max(self.most[engine.name], len(held))
                if len(held) > engine.lora_capacity:
                    self.over.append((engine.name, held))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), self.interval_s)


def describe(failures: Sequence[Outcome], limit: int = 10) -> str:
    """How many failed of each kind (error class, status), then the first few."""
    kinds = Counter(
        f"{type(o.error).__name__} {getattr(o.error, 'status_code', '')}".strip() for o in failures
    )
    lines = [f"{o.replica} {o.model}: {o.error!r}"[:400] for o in failures[:limit]]
    return "\n".join([f"by kind: {dict(kinds)}", *lines])


async def first_success_after(
    since: float, attempt: Callable[[], Any], *, within_s: float = PROPAGATION_S + 3.0
) -> float:
    """Call ``attempt`` every 0.1 s until it returns True; the start time of the first attempt
    that did, as seconds after ``since``. AssertionError if none did within ``within_s``."""
    last: object = None
    while time.monotonic() - since < within_s:
        started = time.monotonic()
        try:
            if await attempt():
                return started - since
        except openai.APIError as exc:
            last = exc
        await asyncio.sleep(0.1)
    raise AssertionError(f"not seen within {within_s:.1f} s (last error: {last!r})")


# --- tests -------------------------------------------------------------------------------------


async def test_churn_under_zipf_traffic_through_two_replicas(
    cluster: ReplicaCluster, tiny_model_dir: Path
) -> None:
    gw_a, gw_b = cluster.replicas
    writer = Adapters(cluster, tiny_model_dir)
    names = [f"z{i:02d}" for i in range(24)]
    # Registered through alternating replicas.
    for i, name in enumerate(names):
        await admin_call(cluster.replicas[i % 2], "register", name, writer.write(name))
    versions = {name: 1 for name in names}
    await asyncio.sleep(PROPAGATION_S)

    traffic = Traffic(cluster.replicas, list(names))
    sampler = CapacitySampler(cluster.engines)
    deleted: set[str] = set()
    pinned: str | None = None
    done: Counter[str] = Counter()

    async def admin_loop() -> None:
        nonlocal pinned
        rng = random.Random(11)
        new_names = (f"n{i:02d}" for i in itertools.count())
        ops = itertools.cycle(("version", "pin", "restore", "delete", "register", "unpin"))
        deadline = time.monotonic() + CHURN_TRAFFIC_S
        for turn in itertools.count():
            if time.monotonic() >= deadline:
                return
            replica = cluster.replicas[turn % 2]
            op = next(ops)
            live = [n for n in traffic.names if n not in deleted]
            if op == "version":
                name = rng.choice(live[:8])
                path = writer.write(name)
                out = await admin_call(replica, "register", name, path, new_version=True)
                versions[name] = int(out["active_version"])
            elif op == "restore":
                name = next((n for n in live if versions[n] > 1), None)
                if name is None:
                    continue
                target = versions[name] - 1
                await admin_call(replica, "restore", name, target)
                versions[name] = target
            elif op == "pin" and pinned is None:
                pinned = rng.choice(live[:6])
                await admin_call(replica, "set_pinned", pinned, True)
            elif op == "unpin" and pinned is not None:
                await admin_call(replica, "set_pinned", pinned, False)
                pinned = None
            elif op == "delete":
                name = rng.choice([n for n in live[8:] if n != pinned])
                deleted.add(name)
                traffic.names.remove(name)  # requests already sent may get a 404
                await admin_call(replica, "delete", name)
                versions.pop(name)
            elif op == "register":
                name = next(new_names)
                path = writer.write(name)
                await admin_call(replica, "register", name, path)
                versions[name] = 1
                # Offered to both replicas once the other must have seen it.
                asyncio.get_running_loop().call_later(PROPAGATION_S, traffic.names.append, name)
            done[op] += 1
            await asyncio.sleep(1.0)

    async def admin_then_stop() -> None:
        try:
            await admin_loop()
            await asyncio.sleep(PROPAGATION_S + 0.5)
        finally:
            traffic.stop.set()

    sampling = asyncio.create_task(sampler.run())
    try:
        await asyncio.gather(traffic.run(), admin_then_stop())
    finally:
        sampler.stop.set()
        await sampling

    failures = traffic.failures()
    unexpected = [o for o in failures if not (o.not_found and o.model in deleted)]
    assert not unexpected, (
        f"{len(unexpected)} of {len(traffic.outcomes)} requests failed:\n"
        f"{describe(unexpected)}\n{cluster.logs()}"
    )
    assert len(traffic.outcomes) >= 60, len(traffic.outcomes)
    assert done["version"] and done["restore"] and done["delete"] and done["register"], done
    assert sampler.samples >= 100, sampler.samples
    assert not sampler.over, f"engine over its {SLOTS_PER_ENGINE} slots: {sampler.over[:5]}"

    # Both replicas list the same registry: every name, at the version the admin loop left.
    for replica in (gw_a, gw_b):
        listed = await admin_call(replica, "list")
        assert {r["name"]: r["active_version"] for r in listed} == versions, replica.name
    # And every registered adapter answers on both.
    sdks = [gw_a.openai(), gw_b.openai()]
    gate = asyncio.Semaphore(4)

    async def answers(sdk: openai.AsyncOpenAI, name: str) -> None:
        async with gate:
            await complete(sdk, name)

    await asyncio.gather(*(answers(sdk, name) for name in versions for sdk in sdks))
    for sdk in sdks:
        for name in deleted:
            with pytest.raises(openai.NotFoundError):
                await complete(sdk, name)


async def test_changes_reach_the_other_replica_within_two_seconds(
    cluster: ReplicaCluster, tiny_model_dir: Path
) -> None:
    gw_a, gw_b = cluster.replicas
    sdk_a, sdk_b = gw_a.openai(), gw_b.openai()
    writer = Adapters(cluster, tiny_model_dir)
    v1_path, v2_path = writer.write("fresh"), writer.write("fresh")

    # Register through A: B serves it within 2 s.
    await admin_call(gw_a, "register", "fresh", v1_path)
    since = time.monotonic()
    seen = await first_success_after(since, lambda: served(sdk_b, "fresh"))
    assert seen <= PROPAGATION_S, f"registration reached B after {seen:.2f} s"
    v1_text = await complete(sdk_b, "fresh")
    assert await complete(sdk_a, "fresh") == v1_text

    # A new version through A: B serves v2's text within 2 s.
    await admin_call(gw_a, "register", "fresh", v2_path, new_version=True)
    v2_text = await complete(sdk_a, "fresh")
    assert v2_text != v1_text, "precondition: the two versions answer differently"
    since = time.monotonic()
    seen = await first_success_after(since, lambda: says(sdk_b, "fresh", v2_text))
    assert seen <= PROPAGATION_S, f"new version reached B after {seen:.2f} s"

    # Restore v1 through B: A serves v1's text again within 2 s.
    await admin_call(gw_b, "restore", "fresh", 1)
    since = time.monotonic()
    seen = await first_success_after(since, lambda: says(sdk_a, "fresh", v1_text))
    assert seen <= PROPAGATION_S, f"restore reached A after {seen:.2f} s"

    # Delete through A: B answers 404 model_not_found within 2 s.
    await admin_call(gw_a, "delete", "fresh")
    since = time.monotonic()
    seen = await first_success_after(since, lambda: gone(sdk_b, "fresh"))
    assert seen <= PROPAGATION_S, f"deletion reached B after {seen:.2f} s"
    assert await gone(sdk_a, "fresh")


async def served(sdk: openai.AsyncOpenAI, model: str) -> bool:
    await complete(sdk, model)
    return True


async def says(sdk: openai.AsyncOpenAI, model: str, text: str) -> bool:
    return await complete(sdk, model) == text


async def gone(sdk: openai.AsyncOpenAI, model: str) -> bool:
    try:
        await complete(sdk, model)
    except openai.NotFoundError as exc:
        return exc.code == "model_not_found"
    return False


async def test_a_replica_killed_with_sigkill_loses_nothing(
    cluster: ReplicaCluster, tiny_model_dir: Path
) -> None:
    gw_a, gw_b = cluster.replicas
    writer = Adapters(cluster, tiny_model_dir)
    names = [f"k{i:02d}" for i in range(8)]
    for i, name in enumerate(names):
        await admin_call(cluster.replicas[i % 2], "register", name, writer.write(name))
    await asyncio.sleep(PROPAGATION_S)

    # Traffic through both; A dies with requests in flight on it.
    traffic = Traffic([gw_a, gw_b], list(names), seed=3)
    running = asyncio.create_task(traffic.run(workers=4))
    await asyncio.sleep(5.0)
    gw_a.kill(signal.SIGKILL)
    killed_at = time.monotonic()
    await asyncio.to_thread(gw_a.process.wait)
    await asyncio.sleep(3.0)
    traffic.stop.set()
    await running
    before = [o for o in traffic.outcomes if o.ended < killed_at and o.error is not None]
    assert not before, describe(before)
    on_b = [o for o in traffic.outcomes if o.replica == gw_b.name]
    assert on_b and not [o for o in on_b if o.error], describe([o for o in on_b if o.error])

    # B alone: the registry is whole, and every adapter answers (more adapters than the slots,
    # so B must evict what A had placed: A's placements may not block it forever).
    listed = await admin_call(gw_b, "list")
    assert sorted(r["name"] for r in listed) == names
    sdk_b = gw_b.openai()
    for _ in range(2):
        for name in names:
            await complete(sdk_b, name)
    sampler = CapacitySampler(cluster.engines)
    sampler.stop.set()
    await sampler.run()
    assert not sampler.over, sampler.over


async def test_an_engine_killed_with_sigkill_fails_over_and_rejoins(
    cluster: ReplicaCluster, tiny_model_dir: Path
) -> None:
    gw_a, gw_b = cluster.replicas
    writer = Adapters(cluster, tiny_model_dir)
    names = [f"e{i:02d}" for i in range(6)]
    for i, name in enumerate(names):
        await admin_call(cluster.replicas[i % 2], "register", name, writer.write(name))
    await asyncio.sleep(PROPAGATION_S)

    traffic = Traffic([gw_a, gw_b], list(names), seed=5)
    sampler = CapacitySampler(cluster.engines)
    running = asyncio.create_task(traffic.run(workers=4))
    sampling = asyncio.create_task(sampler.run())
    try:
        await asyncio.sleep(6.0)
        victim = cluster.engines.engines[0]
        port = victim.port
        victim.kill_process(signal.SIGKILL)
        killed_at = time.monotonic()
        # The supervisor restarts it; the replicas see it ready again (same URL).
        await victim.wait_ready(ENGINE_READY_TIMEOUT_S)
        assert victim.port == port, "the restarted engine moved: the replicas cannot find it"
        rejoined_at = time.monotonic()
        await asyncio.sleep(8.0)
    finally:
        traffic.stop.set()
        sampler.stop.set()
        await asyncio.gather(running, sampling)

    after = [o for o in traffic.outcomes if o.started > killed_at + 0.05]
    assert len(after) >= 20, len(after)
    failed_after = [o for o in after if o.error is not None]
    assert not failed_after, (
        f"{len(failed_after)} of {len(after)} requests sent after the kill failed:\n"
        f"{describe(failed_after)}\n{cluster.logs()}"
    )
    assert not sampler.over, sampler.over
    # Rejoined: both replicas report it ready, and adapters load on it again.
    for replica in (gw_a, gw_b):
        status = await admin_call(replica, "status")
        states = {e["name"]: e["state"] for e in status["engines"]}
        assert all(state == "ready" for state in states.values()), (replica.name, states)
    sdk = gw_a.openai()
    for name in names:
        await complete(sdk, name)
    held = await cluster.engines.loaded_adapters(victim)
    assert held, f"the restarted engine holds no adapter {time.monotonic() - rejoined_at:.0f} s on"
