"""Two gateway processes in front of two real vLLM engines, sharing one real PostgreSQL: they
behave as one (issue 11, "Tests").

* 24 adapters registered through alternating replicas; Zipf (s=1.1) traffic through both
  replicas with the official ``openai`` SDK for 60 s while an admin loop registers new versions,
  restores, pins, unpins and deletes through alternating replicas; one engine is killed with
  SIGKILL half way (its supervisor restarts it). Zero failed client requests (a deleted name may
  answer 404; in the 10 s after the kill, at most 2 answers of 503 "retry shortly" are counted
  and printed, not failed), no engine ever over its 2 slots (sampled from each engine's
  ``/v1/models``), the killed engine rejoins, and every registered adapter answers through both
  replicas at the end.
* A replica killed with SIGKILL: the other keeps serving, every registration made before the kill
  is there, and what the dead replica held stops holding slots.

Takes both cores for about four minutes: two engines of its own (one core each, 2 adapter slots
each), two gateway processes, one throwaway database.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest
import pytest_asyncio

from adapters.client import AdminClient
from adapters.errors import AdapterError
from gateway.engines.managed import ManagedVLLMEngine
from gateway.engines.process_group import free_loopback_port
from gateway.settings import GatewaySettings
from loadtest.adapters_gen import write_random_lora
from tests.integration.conftest import ENGINE_READY_TIMEOUT_S, TINY_SERVED_NAME
from tests.integration.registry_gateway import ADAPTER_SCALE
from tests.support.gateway_replicas import (
    GatewayProcess,
    SharedKeyEngine,
    start_gateway,
    wait_ready,
)
from tests.support.postgres import PostgresServer

pytestmark = [pytest.mark.integration]

SLOTS = 2
ADAPTERS = 24
TRAFFIC_S = 60.0
CLIENTS = 4
ADMIN_EVERY_S = 2.5
DEAD_AFTER_S = 3.0
#: After the SIGKILL of an engine, a 503 "retry shortly" (with Retry-After) is tolerated this
#: long, at most MAX_NEAR_KILL_503 times: a load planned on the engine as it died, before the
#: replicas saw it down (seen once in three runs). Any other failure fails the test.
KILL_WINDOW_S = 10.0
MAX_NEAR_KILL_503 = 2


@dataclass
class Cluster:
    engines: list[ManagedVLLMEngine]
    gateways: list[GatewayProcess]
    admin_token: str
    adapters_root: Path
    tiny_model_dir: Path
    registered: set[str] = field(default_factory=set)
    seeds: dict[str, int] = field(default_factory=dict)

    def admin(self, index: int) -> AdminClient:
        return AdminClient(self.gateways[index].url, self.admin_token, timeout_s=120)

    def sdk(self, index: int) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=f"{self.gateways[index].url}/v1", api_key="unused", max_retries=0, timeout=120
        )

    def warnings(self, limit: int = 60) -> str:
        """The replicas' WARNING and ERROR log lines (for a failing assertion's message)."""
        lines = [
            f"{g.name}: {line}"
            for g in self.gateways
            for line in g.log_path.read_text(errors="replace").splitlines()
            if "WARNING" in line or "ERROR" in line or "no place" in line
        ]
        return "\n".join(lines[-limit:])

    def write(self, name: str) -> Path:
        seed = self.seeds[name] = self.seeds.get(name, 1000 * len(self.seeds)) + 1
        return write_random_lora(
            self.adapters_root / f"{name}-{seed}",
            self.tiny_model_dir,
            rank=8,
            seed=seed,
            scale=ADAPTER_SCALE,
        )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def cluster(
    engine_settings: GatewaySettings,
    tiny_model_dir: Path,
    postgres_server: PostgresServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Cluster]:
    root = tmp_path_factory.mktemp("replicas")
    key = secrets.token_urlsafe(24)
    settings = engine_settings.model_copy(
        update={"data_dir": root / "engines", "max_loras": SLOTS, "max_cpu_loras": SLOTS}
    )
    engines: list[ManagedVLLMEngine] = [
        SharedKeyEngine(settings, key=key, name=f"engine-{i}", cpus=[i]) for i in range(2)
    ]
    gateways: list[GatewayProcess] = []
    try:
        for engine in engines:
            await engine.start()
        await asyncio.gather(*(e.wait_ready(ENGINE_READY_TIMEOUT_S) for e in engines))
        token = secrets.token_urlsafe(24)
        adapters_root = root / "adapters"
        adapters_root.mkdir()
        env = {
            "LORA_GATEWAY_ENGINE_URLS": ",".join(e.url for e in engines),
            "LORA_GATEWAY_ENGINE_API_KEY": key,
            "LORA_GATEWAY_DATABASE_URL": postgres_server.new_database("replicas"),
            "LORA_GATEWAY_ADMIN_TOKEN": token,
            "LORA_GATEWAY_BASE_MODEL": str(tiny_model_dir),
            "LORA_GATEWAY_SERVED_MODEL_NAME": TINY_SERVED_NAME,
            "LORA_GATEWAY_MAX_LORAS": str(SLOTS),
            "LORA_GATEWAY_MAX_CPU_LORAS": str(SLOTS),
            "LORA_GATEWAY_MAX_LORA_RANK": "16",
            "LORA_GATEWAY_ADAPTER_ROOTS": str(adapters_root),
            "LORA_GATEWAY_ENGINE_HEALTH_INTERVAL_S": "0.5",
            "LORA_GATEWAY_REPLICA_DEAD_AFTER_S": str(DEAD_AFTER_S),
        }
        # One data dir for both, as the shared adapters volume of deploy/ (the store engines
        # load from); each replica's logs go to files of their own.
        data_dir = root / "data"
        for name in ("gw-a", "gw-b"):
            gateways.append(
                start_gateway(
                    name, port=free_loopback_port(), data_dir=data_dir, env=env, log_dir=root
                )
            )
        await asyncio.gather(*(wait_ready(g, 120) for g in gateways))
        yield Cluster(engines, gateways, token, adapters_root, tiny_model_dir)
    finally:
        for gateway in gateways:
            gateway.stop()
        for engine in engines:
            await engine.stop()


async def loaded_on(engine: ManagedVLLMEngine) -> set[str] | None:
    """The adapters the engine lists now; None when it does not answer (restarting)."""
    try:
        models = await engine.client.list_models()
    except Exception:
        return None
    return {str(m["id"]) for m in models if m.get("parent") is not None}


def zipf_pick(rng: random.Random, names: list[str]) -> str:
    weights = [1 / (rank + 1) ** 1.1 for rank in range(len(names))]
    return rng.choices(names, weights)[0]


async def test_replicas_behave_as_one_under_churn_and_an_engine_kill(cluster: Cluster) -> None:
    names = [f"r{i:02d}" for i in range(ADAPTERS)]
    for i, name in enumerate(names):
        with cluster.admin(i % 2) as admin:
            await asyncio.to_thread(admin.register, name, cluster.write(name))
        cluster.registered.add(name)
    # Registered through one replica, served through the other within 2 s.
    with cluster.admin(0) as admin:
        await asyncio.to_thread(admin.register, "fresh", cluster.write("fresh"))
    cluster.registered.add("fresh")
    sdk = [cluster.sdk(0), cluster.sdk(1)]
    started = time.monotonic()
    while True:
        try:
            await sdk[1].completions.create(model="fresh", prompt="Hi", max_tokens=2)
            break
        except openai.NotFoundError:
            assert time.monotonic() - started < 2.0, "a registration took over 2 s to reach B"
            await asyncio.sleep(0.05)

    live = list(names)  # what clients may ask for (Zipf over this order)
    deleted: set[str] = set()
    failures: list[str] = []
    near_kill: list[str] = []
    answered = 0
    over_capacity: list[str] = []
    stop = asyncio.Event()
    kill_at = time.monotonic() + TRAFFIC_S / 2
    killed = asyncio.Event()

    async def client(index: int) -> None:
        nonlocal answered
        rng = random.Random(index)
        while not stop.is_set():
            name = zipf_pick(rng, live)
            replica = rng.randrange(2)
            try:
                answer = await sdk[replica].completions.create(
                    model=name, prompt="Hello", max_tokens=2, temperature=0.0
                )
                assert answer.model == name
                answered += 1
            except openai.NotFoundError:
                if name not in deleted:
                    failures.append(f"{name} via {replica}: 404 while registered")
            except openai.APIError as exc:
                line = f"{name} via {replica}: {type(exc).__name__}: {exc}"
                status = getattr(exc, "status_code", None)
                if status == 503 and killed.is_set() and time.monotonic() < kill_at + KILL_WINDOW_S:
                    # A load planned on the engine in the second it died: the answer says
                    # "retry shortly" (Retry-After), which the SDK does by default. Counted.
                    near_kill.append(line)
                else:
                    failures.append(line)

    async def sampler() -> None:
        while not stop.is_set():
            for engine in cluster.engines:
                listed = await loaded_on(engine)
                if listed is not None and len(listed) > SLOTS:
                    over_capacity.append(f"{engine.name}: {sorted(listed)}")
            await asyncio.sleep(0.5)

    async def admin_loop() -> None:
        rng = random.Random(99)
        turn = 0
        pinned: str | None = None
        while not stop.is_set():
            await asyncio.sleep(ADMIN_EVERY_S)
            turn += 1
            name = rng.choice([n for n in live if n != pinned])
            with cluster.admin(turn % 2) as admin:
                step = turn % 5
                if step == 0:
                    await asyncio.to_thread(
                        admin.register, name, cluster.write(name), new_version=True
                    )
                elif step == 1:
                    record = await asyncio.to_thread(admin.get, name)
                    if record["active_version"] > 1:
                        await asyncio.to_thread(admin.restore, name, 1)
                elif step == 2:
                    if pinned is not None:
                        await asyncio.to_thread(admin.set_pinned, pinned, False)
                    pinned = name
                    await asyncio.to_thread(admin.set_pinned, name, True)
                elif step == 3 and len(live) > ADAPTERS - 4:
                    live.remove(name)
                    deleted.add(name)
                    await asyncio.sleep(0.2)  # clients picking it just now still get 200s
                    await asyncio.to_thread(admin.delete, name)
                    cluster.registered.discard(name)
                else:
                    new = f"n{turn:03d}"
                    await asyncio.to_thread(admin.register, new, cluster.write(new))
                    cluster.registered.add(new)
                    live.append(new)

    async def killer() -> None:
        await asyncio.sleep(max(0.0, kill_at - time.monotonic()))
        cluster.engines[1].kill_process(signal.SIGKILL)
        killed.set()

    workers = [asyncio.create_task(client(i)) for i in range(CLIENTS)]
    side = [asyncio.create_task(t) for t in (sampler(), admin_loop(), killer())]
    try:
        await asyncio.sleep(TRAFFIC_S)
    finally:
        stop.set()
        await asyncio.gather(*workers)
        results = await asyncio.gather(*side, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    assert killed.is_set()
    assert failures == [], f"{failures[:10]}\n{cluster.warnings()}"
    assert len(near_kill) <= MAX_NEAR_KILL_503, f"{near_kill}\n{cluster.warnings()}"
    print(f"{answered} answers; 503s just after the engine kill: {near_kill}")
    assert over_capacity == [], over_capacity[:5]
    assert answered > 100, answered

    # The killed engine rejoins (its supervisor restarted it), empty, and fills on demand.
    await cluster.engines[1].wait_ready(ENGINE_READY_TIMEOUT_S)
    async with httpx.AsyncClient(timeout=10) as http:
        for gateway in cluster.gateways:
            deadline = time.monotonic() + 30
            while True:
                status = (
                    await http.get(
                        f"{gateway.url}/admin/status",
                        headers={"Authorization": f"Bearer {cluster.admin_token}"},
                    )
                ).json()
                states = {e["url"]: e["state"] for e in status["engines"]}
                if all(s == "ready" for s in states.values()):
                    break
                assert time.monotonic() < deadline, states
                await asyncio.sleep(0.5)
            assert [r["live"] for r in status["replicas"]] == [True, True]

    # Every registered adapter answers through both replicas; deleted ones are gone from both.
    with cluster.admin(1) as admin:
        listed = {a["name"] for a in await asyncio.to_thread(admin.list)}
    assert listed == cluster.registered
    pending = [(name, replica) for name in sorted(listed) for replica in (0, 1)]
    final_failures: list[str] = []

    async def final_worker() -> None:
        while pending:
            name, replica = pending.pop()
            try:
                answer = await sdk[replica].completions.create(
                    model=name, prompt="Hello", max_tokens=2
                )
                assert answer.model == name
            except openai.APIError as exc:
                final_failures.append(f"{name} via {replica}: {exc}")

    await asyncio.gather(*(final_worker() for _ in range(CLIENTS)))
    assert final_failures == []
    for name in deleted:
        for replica in (0, 1):
            with pytest.raises(openai.NotFoundError):
                await sdk[replica].completions.create(model=name, prompt="Hi", max_tokens=1)
    for engine in cluster.engines:
        listed_now = await loaded_on(engine)
        assert listed_now is not None and len(listed_now) <= SLOTS


async def test_a_replica_killed_with_sigkill_leaves_the_other_serving(cluster: Cluster) -> None:
    with cluster.admin(1) as admin:
        for name in ("before-kill-1", "before-kill-2"):
            await asyncio.to_thread(admin.register, name, cluster.write(name))
            cluster.registered.add(name)
    sdk_b = cluster.sdk(1)
    await sdk_b.completions.create(model="before-kill-1", prompt="Hi", max_tokens=2)
    cluster.gateways[1].kill()

    sdk_a = cluster.sdk(0)
    with cluster.admin(0) as admin:
        listed = {a["name"] for a in await asyncio.to_thread(admin.list)}
    assert {"before-kill-1", "before-kill-2"} <= listed
    assert listed == cluster.registered
    # Every adapter still answers through A: what B held stops counting once B is dead.
    for name in [*sorted(listed)[:8], "before-kill-1", "before-kill-2"]:
        answer = await sdk_a.completions.create(model=name, prompt="Hello", max_tokens=2)
        assert answer.model == name
    with cluster.admin(0) as admin:
        status = await asyncio.to_thread(admin.status)
    replicas = {r["id"]: r for r in status["replicas"]}
    assert sum(r["live"] for r in replicas.values()) == 1
    with pytest.raises(AdapterError):  # B is gone
        AdminClient(cluster.gateways[1].url, cluster.admin_token, timeout_s=2).list()
