"""The benchmark's server processes: start pinned to CPUs, wait until they serve, stop the tree.

Each :class:`Service` is a child in its own session (so its whole process tree is signalled),
pinned with ``sched_setaffinity`` before ``exec`` (so every thread and child inherits the CPU
set), with stdout and stderr in a log file. Starters for the fake upstream, a vLLM OpenAI server
(same flags as :mod:`gateway.engines.managed`), this gateway (``lora-gateway serve
--engine-url``) and a throwaway ``redis-server``; LiteLLM's proxy lives in
:mod:`loadtest.litellm_proxy`. Used by :mod:`loadtest.bench` and the tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

STOP_GRACE_S = 15.0
LOG_TAIL_BYTES = 4000


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_list(cpus: frozenset[int] | None) -> str:
    return ",".join(str(cpu) for cpu in sorted(cpus or ()))


@dataclass(slots=True)
class Service:
    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    cpus: frozenset[int] | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-LOG_TAIL_BYTES:].decode("utf-8", "replace")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the whole tree so far (for CPU cost per request)."""
        try:
            root = psutil.Process(self.process.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0.0
        total = 0.0
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def wait_ready(
        self,
        path: str = "/v1/models",
        timeout_s: float = 120.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Poll ``GET url+path`` until 200; raise with the log tail if it dies or times out."""
        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        with httpx.Client(timeout=5.0) as client:
            while time.monotonic() < deadline:
                if not self.alive():
                    raise RuntimeError(
                        f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}"
                    )
                try:
                    response = client.get(self.url + path, headers=dict(headers or {}))
                    if response.status_code == 200:
                        return
                    last = f"HTTP {response.status_code}: {response.text[:200]}"
                except httpx.HTTPError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                time.sleep(0.25)
        self.stop()
        raise TimeoutError(
            f"{self.name} not ready after {timeout_s:.0f}s ({last}):\n{self.log_tail()}"
        )

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM to the process group, SIGKILL after ``grace_s``."""
        if self.process.poll() is not None:
            return
        pgid = self.process.pid  # start_new_session: the child leads its own group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)


def spawn(
    name: str,
    command: Sequence[str],
    *,
    url: str,
    log_dir: Path,
    cpus: frozenset[int] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Service:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    full_env = dict(os.environ)
    full_env.update(env or {})

    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(command),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=pin if cpus else None,
        )
    return Service(name=name, url=url, process=process, log_path=log_path, cpus=cpus)


def start_fake_vllm(
    log_dir: Path,
    *,
    model: str,
    chunks: int = 16,
    cpus: frozenset[int] | None = None,
    name: str = "fake-vllm",
    delay_ms: float = 0.0,
    load_delay_ms: float = 0.0,
) -> Service:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "loadtest.fake_vllm",
        "--port",
        str(port),
        "--model",
        model,
        "--chunks",
        str(chunks),
        "--delay-ms",
        str(delay_ms),
        "--load-delay-ms",
        str(load_delay_ms),
    ]
    service = spawn(
        name,
        command,
        url=f"http://127.0.0.1:{port}",
        log_dir=log_dir,
        cpus=cpus,
        cwd=Path(__file__).resolve().parents[1],
    )
    service.wait_ready("/health", timeout_s=30)
    return service


@dataclass(frozen=True, slots=True)
class VllmOptions:
    model_dir: Path
    served_name: str
    max_loras: int = 2
    max_cpu_loras: int = 4
    max_lora_rank: int = 8
    max_model_len: int = 1024
    kv_cache_gib: int = 1
    dtype: str = "bfloat16"


def start_vllm(
    options: VllmOptions,
    log_dir: Path,
    *,
    cpus: frozenset[int] | None = None,
    timeout_s: float = 300.0,
    name: str = "vllm",
) -> Service:
    """A real vLLM OpenAI server with LoRA on, runtime loading allowed (log: ``<name>.log``)."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(options.model_dir),
        "--served-model-name",
        options.served_name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        options.dtype,
        "--max-model-len",
        str(options.max_model_len),
        "--enable-lora",
        "--max-loras",
        str(options.max_loras),
        "--max-cpu-loras",
        str(options.max_cpu_loras),
        "--max-lora-rank",
        str(options.max_lora_rank),
    ]
    env = {
        "VLLM_CPU_KVCACHE_SPACE": str(options.kv_cache_gib),
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        # Bind vLLM's OpenMP threads to the CPUs it is pinned to, not to every core.
        "VLLM_CPU_OMP_THREADS_BIND": cpu_list(cpus) if cpus else "auto",
        "HF_HUB_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    service = spawn(
        name, command, url=f"http://127.0.0.1:{port}", log_dir=log_dir, cpus=cpus, env=env
    )
    service.wait_ready("/health", timeout_s=timeout_s)
    return service


@dataclass(frozen=True, slots=True)
class GatewayOptions:
    engine_url: str
    data_dir: Path
    base_model: str
    served_name: str
    admin_token: str
    max_loras: int = 2
    max_cpu_loras: int = 4
    max_lora_rank: int = 8
    adapter_roots: tuple[Path, ...] = ()
    api_key: str = ""
    #: More engines behind the gateway (each one more ``--engine-url``).
    more_engine_urls: tuple[str, ...] = ()
    #: ``affinity`` or ``replicate``; None: the gateway's default.
    placement: str | None = None
    #: ``serve --workers``: gateway processes on the one port.
    workers: int = 1
    #: ``LORA_GATEWAY_REDIS_URL``: limits counted in this Redis (None: in the process).
    redis_url: str | None = None
    #: The client key the readiness probe sends when there is no ``api_key`` (a virtual key
    #: seeded into the registry before the start).
    probe_key: str = ""


def gateway_executable() -> str:
    candidate = Path(sys.executable).with_name("lora-gateway")
    return str(candidate) if candidate.exists() else "lora-gateway"


def start_gateway(
    options: GatewayOptions,
    log_dir: Path,
    *,
    cpus: frozenset[int] | None = None,
    name: str = "gateway",
    timeout_s: float = 120.0,
) -> Service:
    """``lora-gateway serve --engine-url`` in front of an engine someone else runs."""
    port = free_port()
    command = [
        gateway_executable(),
        "serve",
        "--engine-url",
        options.engine_url,
        "--port",
        str(port),
        "--data-dir",
        str(options.data_dir),
    ]
    for url in options.more_engine_urls:
        command += ["--engine-url", url]
    if options.placement is not None:
        command += ["--placement", options.placement]
    if options.workers > 1:
        command += ["--workers", str(options.workers)]
    env = {
        "LORA_GATEWAY_BASE_MODEL": options.base_model,
        "LORA_GATEWAY_SERVED_MODEL_NAME": options.served_name,
        "LORA_GATEWAY_ADMIN_TOKEN": options.admin_token,
        "LORA_GATEWAY_MAX_LORAS": str(options.max_loras),
        "LORA_GATEWAY_MAX_CPU_LORAS": str(options.max_cpu_loras),
        "LORA_GATEWAY_MAX_LORA_RANK": str(options.max_lora_rank),
        "LORA_GATEWAY_ADAPTER_ROOTS": ",".join(str(p) for p in options.adapter_roots),
        "LORA_GATEWAY_LOG_LEVEL": "WARNING",
        "LORA_GATEWAY_API_KEYS": options.api_key,
        "HF_HUB_OFFLINE": "1",
    }
    if options.redis_url:
        env["LORA_GATEWAY_REDIS_URL"] = options.redis_url
    service = spawn(
        name, command, url=f"http://127.0.0.1:{port}", log_dir=log_dir, cpus=cpus, env=env
    )
    probe = options.api_key or options.probe_key
    headers = {"Authorization": f"Bearer {probe}"} if probe else None
    service.wait_ready("/v1/models", timeout_s=timeout_s, headers=headers)
    return service


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(
    log_dir: Path, *, cpus: frozenset[int] | None = None, timeout_s: float = 10.0
) -> Service | None:
    """A throwaway ``redis-server`` on a loopback port, without persistence (its URL is
    ``redis://127.0.0.1:PORT/0``); None when ``redis-server`` is not on PATH."""
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    port = free_port()
    work = log_dir / f"redis-{port}"
    work.mkdir(parents=True, exist_ok=True)
    command = [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(work)]
    command += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
    service = spawn("redis", command, url=f"redis://127.0.0.1:{port}/0", log_dir=log_dir, cpus=cpus)
    deadline = time.monotonic() + timeout_s
    while not _answers_ping(port):
        if not service.alive() or time.monotonic() > deadline:
            service.stop()
            raise RuntimeError(f"redis-server did not start on port {port}:\n{service.log_tail()}")
        time.sleep(0.05)
    return service
