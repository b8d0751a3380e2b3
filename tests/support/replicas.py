"""Several gateway *processes* in front of the same real vLLM engines, sharing one PostgreSQL.

The multi-replica integration tests (tests/integration/test_replicas.py) build, per module,
:class:`EnginePair`: real vLLM engines on the tiny model started by the test process
(:class:`FixedKeyEngine`, a supervised :class:`~gateway.engines.managed.ManagedVLLMEngine`: one
killed with SIGKILL is restarted by its supervisor), each bound to its own core, each with its
own adapter slots (``--max-cpu-loras``) and ONE engine API key that survives restarts, as a
remote vLLM server's ``--api-key`` would. Per test, :func:`replica_cluster` starts gateway
replicas with ``lora-gateway serve --engine-url ...`` in their own process groups (so a test can
SIGKILL one), each on its own port and log file, all on the same PostgreSQL database (new for
the test) and the same data dir (the shared adapter store, as a shared volume would be in
Kubernetes), and waits for each one's ``/readyz``. At exit the replicas are stopped and every
adapter the engines still hold is unloaded, so the next test starts from empty engines.

Clients: :meth:`GatewayReplica.admin` (:class:`adapters.client.AdminClient`, synchronous: call
it through ``asyncio.to_thread``) and :meth:`GatewayReplica.openai` (the official
``openai.AsyncOpenAI``). :meth:`EnginePair.loaded_adapters` reads an engine's own
``GET /v1/models`` with the engine key: what it really holds, whichever replica loaded it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from openai import AsyncOpenAI

from adapters.client import AdminClient
from gateway.engines.managed import ManagedVLLMEngine
from gateway.settings import GatewaySettings
from tests.support.gateway_server import bind_free_port

#: How long a gateway replica may take to answer 200 on /readyz.
REPLICA_READY_TIMEOUT_S = 90.0
#: How long a replica has to exit after SIGTERM before it gets SIGKILL.
REPLICA_STOP_GRACE_S = 15.0
ADMIN_TOKEN = "replicas-admin-token"
#: Client key of /v1 on every replica.
CLIENT_KEY = "replicas-client-key"
LOG_TAIL_CHARS = 4000


class FixedKeyEngine(ManagedVLLMEngine):
    """A managed vLLM engine whose API key is the same at every start.

    The gateway replicas reach it as a remote engine with ``LORA_GATEWAY_ENGINE_API_KEY``, so
    its key must survive the restart its supervisor does after a SIGKILL (a managed engine
    otherwise draws a new one per start).
    """

    def __init__(
        self, settings: GatewaySettings, *, name: str, key: str, cpus: Sequence[int]
    ) -> None:
        self._fixed_key = key
        super().__init__(settings, name=name, cpus=cpus)

    async def _use_api_key(self, key: str | None) -> None:
        await super()._use_api_key(self._fixed_key)


@dataclass
class EnginePair:
    """The engines every replica of a test module sends to, and their one API key."""

    engines: list[FixedKeyEngine]
    key: str

    @property
    def urls(self) -> list[str]:
        return [engine.url for engine in self.engines]

    async def loaded_adapters(self, engine: FixedKeyEngine, timeout_s: float = 5.0) -> list[str]:
        """The adapters ``engine`` holds now (its own ``GET /v1/models``, base excluded)."""
        async with httpx.AsyncClient(timeout=timeout_s) as http:
            response = await http.get(
                f"{engine.url}/v1/models", headers={"Authorization": f"Bearer {self.key}"}
            )
        response.raise_for_status()
        return [
            str(model["id"])
            for model in response.json()["data"]
            if model.get("parent") is not None and model["id"] != engine.base_model
        ]

    async def unload_everything(self) -> None:
        """Unload every adapter from every ready engine (a clean slate for the next test)."""
        async with httpx.AsyncClient(
            timeout=30.0, headers={"Authorization": f"Bearer {self.key}"}
        ) as http:
            for engine in self.engines:
                if not engine.ready:
                    continue
                for name in await self.loaded_adapters(engine):
                    await http.post(
                        f"{engine.url}/v1/unload_lora_adapter", json={"lora_name": name}
                    )


@contextlib.asynccontextmanager
async def engine_pair(
    settings: GatewaySettings, *, count: int = 2, ready_timeout_s: float = 300.0
) -> AsyncIterator[EnginePair]:
    """``count`` supervised engines, engine ``i`` bound to core ``i`` (modulo the cores this
    process may use), all READY; stopped (whole process trees) at exit."""
    cores = sorted(os.sched_getaffinity(0))
    key = secrets.token_urlsafe(24)
    engines = [
        FixedKeyEngine(settings, name=f"engine-{i}", key=key, cpus=[cores[i % len(cores)]])
        for i in range(count)
    ]
    try:
        for engine in engines:
            await engine.start()
        await asyncio.gather(*(engine.wait_ready(ready_timeout_s) for engine in engines))
        yield EnginePair(engines=engines, key=key)
    finally:
        await asyncio.gather(*(engine.stop() for engine in engines), return_exceptions=True)


@dataclass
class GatewayReplica:
    """One ``lora-gateway serve`` process, leader of its own process group."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    _clients: list[AsyncOpenAI] = field(default_factory=list)

    def admin(self) -> AdminClient:
        return AdminClient(self.url, ADMIN_TOKEN, timeout_s=120.0)

    def openai(self, timeout_s: float = 60.0) -> AsyncOpenAI:
        """An SDK client for this replica (closed with the cluster); no SDK retries."""
        client = AsyncOpenAI(
            base_url=f"{self.url}/v1", api_key=CLIENT_KEY, max_retries=0, timeout=timeout_s
        )
        self._clients.append(client)
        return client

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the replica's whole process group."""
        os.killpg(self.process.pid, sig)

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        except OSError as exc:
            return f"(no log: {exc})"

    async def close_clients(self) -> None:
        for client in self._clients:
            await client.close()
        self._clients.clear()

    async def stop(self) -> None:
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.kill(signal.SIGTERM)
            deadline = time.monotonic() + REPLICA_STOP_GRACE_S
            while self.running and time.monotonic() < deadline:  # noqa: ASYNC110 (a process)
                await asyncio.sleep(0.1)
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.kill(signal.SIGKILL)
        await asyncio.to_thread(self.process.wait)
        await self.close_clients()


@dataclass
class ReplicaCluster:
    """Gateway replicas in front of one :class:`EnginePair`, sharing a database and data dir."""

    engines: EnginePair
    replicas: list[GatewayReplica]
    data_dir: Path
    database_url: str

    def logs(self) -> str:
        """The tail of every replica's log, for assertion messages."""
        return "\n".join(f"--- {r.name} ({r.log_path}):\n{r.log_tail()}" for r in self.replicas)


def replica_environment(
    settings: GatewaySettings, engines: EnginePair, database_url: str, data_dir: Path
) -> dict[str, str]:
    """The environment of a replica: this one's without any ``LORA_GATEWAY_*``, plus the
    cluster's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORA_GATEWAY_")}
    env.update(
        {
            "LORA_GATEWAY_DATABASE_URL": database_url,
            "LORA_GATEWAY_ENGINE_URLS": ",".join(engines.urls),
            "LORA_GATEWAY_ENGINE_API_KEY": engines.key,
            "LORA_GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN,
            "LORA_GATEWAY_API_KEYS": CLIENT_KEY,
            "LORA_GATEWAY_BASE_MODEL": settings.base_model,
            "LORA_GATEWAY_SERVED_MODEL_NAME": settings.served_model_name or "",
            "LORA_GATEWAY_DATA_DIR": str(data_dir),
            "LORA_GATEWAY_MAX_LORAS": str(settings.max_loras),
            "LORA_GATEWAY_MAX_CPU_LORAS": str(settings.cpu_lora_capacity),
            "LORA_GATEWAY_MAX_LORA_RANK": str(settings.max_lora_rank),
            "LORA_GATEWAY_ENGINE_HEALTH_INTERVAL_S": "0.5",
            "LORA_GATEWAY_DRAIN_TIMEOUT_S": "5",
            "LORA_GATEWAY_LOG_FORMAT": "text",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def start_replica(name: str, env: dict[str, str], log_dir: Path) -> GatewayReplica:
    """``lora-gateway serve`` on a free loopback port, in its own process group."""
    with bind_free_port() as sock:
        port = int(sock.getsockname()[1])
    log_path = log_dir / f"{name}.log"
    command = [
        str(Path(sys.executable).parent / "lora-gateway"),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    return GatewayReplica(
        name=name, url=f"http://127.0.0.1:{port}", process=process, log_path=log_path
    )


async def wait_replica_ready(replica: GatewayReplica, timeout_s: float) -> None:
    """Until ``GET /readyz`` answers 200; fails with the replica's log if it exits or times
    out."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=2.0) as http:
        while time.monotonic() < deadline:
            if not replica.running:
                raise RuntimeError(
                    f"replica {replica.name} exited with {replica.process.returncode}:\n"
                    f"{replica.log_tail()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"{replica.url}/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    raise RuntimeError(
        f"replica {replica.name} not ready after {timeout_s:.0f} s:\n{replica.log_tail()}"
    )


@contextlib.asynccontextmanager
async def replica_cluster(
    settings: GatewaySettings,
    engines: EnginePair,
    database_url: str,
    work_dir: Path,
    *,
    count: int = 2,
) -> AsyncIterator[ReplicaCluster]:
    """``count`` replicas (``gw-a``, ``gw-b``, ...) on ``database_url`` and one data dir under
    ``work_dir``, all ready. At exit: replicas stopped, engines emptied."""
    data_dir = work_dir / "shared-data"
    (data_dir / "adapters").mkdir(parents=True, exist_ok=True)
    log_dir = work_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    env = replica_environment(settings, engines, database_url, data_dir)
    replicas: list[GatewayReplica] = []
    try:
        for index in range(count):
            replicas.append(start_replica(f"gw-{chr(ord('a') + index)}", env, log_dir))
        await asyncio.gather(*(wait_replica_ready(r, REPLICA_READY_TIMEOUT_S) for r in replicas))
        yield ReplicaCluster(
            engines=engines, replicas=replicas, data_dir=data_dir, database_url=database_url
        )
    finally:
        await asyncio.gather(*(r.stop() for r in replicas), return_exceptions=True)
        with contextlib.suppress(httpx.HTTPError):
            await engines.unload_everything()
