"""Two gateway processes in front of two real vLLM engines, sharing one real PostgreSQL: they
behave as one (issue 11, "Tests").

* 24 adapters registered through alternating replicas; Zipf (s=1.1) traffic through both
  replicas with the official ``openai`` SDK for 60 s while an admin loop registers new versions,
  restores, pins, unpins and deletes through alternating replicas; one engine is killed with
  SIGKILL half way (its supervisor restarts it). Zero failed client requests (a deleted name may
  answer 404), no engine ever over its 2 slots (sampled from each engine's ``/v1/models``), the
  killed engine rejoins, and every registered adapter answers through both replicas at the end.
* Each kind of change made through one replica reaches the other within 2 s: a registration,
  a new version and a restore (told apart by their greedy text), a pin (the other replica,
  serving more adapters than the free slots, never evicts it) and a deletion (404
  ``model_not_found``).
* A resident adapter is served by both replicas while the database refuses every connection
  for a moment (no database round trip on the hot path).
* A replica killed with SIGKILL: the other keeps serving, every registration made before the kill
  is there, and what the dead replica held stops holding slots.

Takes both cores for about four minutes: two engines of its own (one core each, 2 adapter slots
each), two gateway processes, one throwaway database.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest
import pytest_asyncio
from sqlalchemy import create_engine, make_url, text

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
CLIENT_KEY = "replicas-client-key"
#: The issue's bound on how long a change made through one replica takes to reach the others.
PROPAGATION_S = 2.0
#: Tokens of a greedy answer: enough for two versions of an adapter to differ.
GREEDY_TOKENS = 8
#: How long the database refuses connections: under DEAD_AFTER_S, so no replica is dead.
DATABASE_OUTAGE_S = 1.5


@dataclass
class Cluster:
    engines: list[ManagedVLLMEngine]
    gateways: list[GatewayProcess]
    admin_token: str
    adapters_root: Path
    tiny_model_dir: Path
    #: The SQLAlchemy URL of the registry database the replicas share.
    database_url: str
    registered: set[str] = field(default_factory=set)
    seeds: dict[str, int] = field(default_factory=dict)

    def admin(self, index: int) -> AdminClient:
        return AdminClient(self.gateways[index].url, self.admin_token, timeout_s=120)

    def sdk(self, index: int) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=f"{self.gateways[index].url}/v1",
            api_key=CLIENT_KEY,
            max_retries=0,
            timeout=120,
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
        database_url = postgres_server.new_database("replicas")
        env = {
            "LORA_GATEWAY_ENGINE_URLS": ",".join(e.url for e in engines),
            "LORA_GATEWAY_ENGINE_API_KEY": key,
            "LORA_GATEWAY_DATABASE_URL": database_url,
            "LORA_GATEWAY_ADMIN_TOKEN": token,
            # A static client key: /v1 needs it, and checking it needs no database (an open
            # gateway asks the key store whether virtual keys exist, once per key_cache_ttl_s).
            "LORA_GATEWAY_API_KEYS": CLIENT_KEY,
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
        yield Cluster(engines, gateways, token, adapters_root, tiny_model_dir, database_url)
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
                at = time.monotonic() - kill_at  # seconds after the engine kill (< 0: before)
                failures.append(f"{name} via {replica} at {at:+.1f} s: {type(exc).__name__}: {exc}")

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
                    # Clients ask for it through either replica once the bound for a
                    # registration to reach the others has passed (before, the other one may
                    # rightly answer 404).
                    asyncio.get_running_loop().call_later(PROPAGATION_S, live.append, new)

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
    print(f"{answered} answers, none failed")
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


async def all_engines_ready(cluster: Cluster, within_s: float = ENGINE_READY_TIMEOUT_S) -> None:
    """Until every engine is READY and both replicas' ``/admin/status`` say so (a test that
    killed an engine may have ended before it rejoined)."""
    for engine in cluster.engines:
        await engine.wait_ready(within_s)
    deadline = time.monotonic() + within_s
    for index in range(len(cluster.gateways)):
        while True:
            with cluster.admin(index) as admin:
                status = await asyncio.to_thread(admin.status)
            states = {e["name"]: e["state"] for e in status["engines"]}
            if all(state == "ready" for state in states.values()):
                break
            assert time.monotonic() < deadline, states
            await asyncio.sleep(0.5)


async def greedy(sdk: openai.AsyncOpenAI, model: str) -> str:
    """A greedy completion long enough that two versions of an adapter answer differently."""
    answer = await sdk.completions.create(
        model=model, prompt="Hello", max_tokens=GREEDY_TOKENS, temperature=0.0
    )
    assert answer.model == model
    return answer.choices[0].text


async def register_and_reach(
    cluster: Cluster, name: str, *, via: int, served_by: openai.AsyncOpenAI, what: str
) -> float:
    """Register ``name`` through replica ``via``; it must answer through ``served_by`` within
    PROPAGATION_S (see :func:`reached_within`)."""
    with cluster.admin(via) as admin:
        await asyncio.to_thread(admin.register, name, cluster.write(name))
    cluster.registered.add(name)

    async def serves() -> bool:
        await greedy(served_by, name)
        return True

    return await reached_within(what, serves)


async def reached_within(what: str, check: Callable[[], Awaitable[bool]]) -> float:
    """Ask ``check`` every 0.05 s until it is True: the seconds from the call to the start of
    the first attempt that was. Fails if that attempt started over PROPAGATION_S late."""
    started = time.monotonic()
    last: BaseException | None = None
    while time.monotonic() - started <= PROPAGATION_S:
        attempt = time.monotonic()
        try:
            if await check():
                return attempt - started
        except openai.APIError as exc:
            last = exc
        await asyncio.sleep(0.05)
    raise AssertionError(
        f"{what} took over {PROPAGATION_S} s to reach the other replica ({last!r})"
    )


async def test_each_kind_of_change_reaches_the_other_replica_within_two_seconds(
    cluster: Cluster,
) -> None:
    """Registration, new version, restore, pin and delete made through one replica: the other
    serves accordingly within 2 s. The version a replica serves is told apart by its greedy
    text."""
    await all_engines_ready(cluster)
    sdk = [cluster.sdk(0), cluster.sdk(1)]
    # More adapters of its own than the engines' slots, for the pin check (registered through B).
    others = [f"spare-{i}" for i in range(2 * SLOTS + 1)]
    with cluster.admin(1) as admin:
        for name in others:
            await asyncio.to_thread(admin.register, name, cluster.write(name))
            cluster.registered.add(name)
    await register_and_reach(cluster, "versions", via=0, served_by=sdk[1], what="a registration")
    v1 = await greedy(sdk[0], "versions")
    assert await greedy(sdk[1], "versions") == v1

    # A new version through A: B answers with its text within 2 s.
    with cluster.admin(0) as admin:
        out = await asyncio.to_thread(
            admin.register, "versions", cluster.write("versions"), new_version=True
        )
    assert out["active_version"] == 2
    v2 = await greedy(sdk[0], "versions")
    assert v2 != v1, "precondition: the two versions answer differently"

    async def b_says_v2() -> bool:
        return await greedy(sdk[1], "versions") == v2

    await reached_within("a new version", b_says_v2)

    # Restore v1 through B: A answers with v1's text again within 2 s.
    with cluster.admin(1) as admin:
        await asyncio.to_thread(admin.restore, "versions", 1)

    async def a_says_v1() -> bool:
        return await greedy(sdk[0], "versions") == v1

    await reached_within("a restore", a_says_v1)

    # Pin through A: B, serving more adapters than there are free slots, never evicts it.
    with cluster.admin(0) as admin:
        await asyncio.to_thread(admin.set_pinned, "versions", True)
        upstream = (await asyncio.to_thread(admin.get, "versions"))["upstream_name"]
    await asyncio.sleep(PROPAGATION_S)
    await greedy(sdk[1], "versions")  # loaded (if it was not) and pinned on an engine
    for name in [*others, *others]:
        await greedy(sdk[1], name)
        held = [await loaded_on(engine) for engine in cluster.engines]
        assert any(upstream in (h or set()) for h in held), (
            f"pinned through A, evicted for B's {name}: {held}\n{cluster.warnings()}"
        )
    with cluster.admin(1) as admin:
        await asyncio.to_thread(admin.set_pinned, "versions", False)

    # Delete through A: B answers 404 model_not_found within 2 s.
    with cluster.admin(0) as admin:
        await asyncio.to_thread(admin.delete, "versions")
    cluster.registered.discard("versions")

    async def b_says_404() -> bool:
        try:
            await greedy(sdk[1], "versions")
        except openai.NotFoundError as exc:
            return exc.code == "model_not_found"
        return False

    await reached_within("a deletion", b_says_404)
    with pytest.raises(openai.NotFoundError):
        await greedy(sdk[0], "versions")


@contextlib.contextmanager
def database_refusing(server: PostgresServer, database_url: str) -> Iterator[None]:
    """While inside: the replicas' database takes no connection (``ALLOW_CONNECTIONS false``,
    which binds superusers too) and its open ones are ended."""
    name = make_url(database_url).database
    admin = create_engine(server.url(), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            connection.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                {"n": name},
            )
        yield
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()


async def test_a_resident_adapter_is_served_with_the_database_unreachable(
    cluster: Cluster, postgres_server: PostgresServer
) -> None:
    """The hot path of a request for a resident adapter makes no database round trip: with the
    shared database refusing every connection for a moment (shorter than the replicas' dead-after
    bound), both replicas still answer it; once it is back, they follow each other again."""
    sdk = [cluster.sdk(0), cluster.sdk(1)]
    with cluster.admin(0) as admin:
        await asyncio.to_thread(admin.register, "resident", cluster.write("resident"))
    cluster.registered.add("resident")
    await asyncio.sleep(PROPAGATION_S)
    for replica in (0, 1, 0, 1):  # loaded, and known as loaded to both
        await greedy(sdk[replica], "resident")

    answered = 0
    with database_refusing(postgres_server, cluster.database_url):
        until = time.monotonic() + DATABASE_OUTAGE_S
        while time.monotonic() < until:
            for replica in (0, 1):
                try:
                    await greedy(sdk[replica], "resident")
                except openai.APIError as exc:
                    raise AssertionError(
                        f"replica {replica} needed the database for a resident adapter: {exc!r}\n"
                        f"{cluster.warnings()}"
                    ) from exc
                answered += 1
    assert answered >= 4, answered

    # Back: a registration through B reaches A within the usual bound again.
    await register_and_reach(
        cluster, "after-outage", via=1, served_by=sdk[0], what="a registration after the outage"
    )


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
