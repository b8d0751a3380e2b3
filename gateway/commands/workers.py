"""``lora-gateway serve --workers N``: N gateway processes answering on one port.

Called by :func:`gateway.commands.serve.serve` when ``--workers`` is above 1. A Python gateway
uses one core; this puts every core to work with the multi-replica machinery the gateway already
has (:mod:`gateway.lifecycle.replicas`): each worker is a replica.

The parent process

* binds the listening socket once (so ``--port 0`` works and every worker accepts on the same
  socket; the kernel hands each connection to one of them);
* creates the registry's tables and the admin token before any worker starts (no two workers
  race to make them);
* starts the managed vLLM engines itself, once, with one engine key kept across their restarts
  (:class:`~gateway.engines.managed.ManagedVLLMEngine`), and supervises them; the workers reach
  them as remote engines (``engine_urls`` + ``engine_api_key``). With ``--engine-url`` the
  workers use those engines directly;
* spawns the workers (``multiprocessing`` spawn: fresh interpreters, nothing inherited but the
  socket and the settings), each running :func:`~gateway.commands.serve.run_gateway` with
  ``shared_placements`` on, so they share the engines' adapter slots through the registry
  database and follow each other's registry changes (on SQLite the database file in the data
  dir is the shared one);
* on SIGINT or SIGTERM passes SIGTERM to every worker (each drains its requests), waits for
  them, then stops the engines. A worker that dies on its own stops the whole service (exit
  code 1) rather than leave a partial one behind a port that still answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import secrets
import signal
import socket
from multiprocessing.process import BaseProcess

from pydantic import SecretStr

from gateway.engines.base import Engine
from gateway.engines.factory import build_engines
from gateway.settings import GatewaySettings

logger = logging.getLogger(__name__)

#: The most worker processes one gateway runs.
MAX_WORKERS = 64
#: How often the parent looks at its workers.
WATCH_INTERVAL_S = 0.5
#: How long a worker may take to stop after SIGTERM beyond its drain timeout.
STOP_GRACE_S = 10.0


def worker_settings(
    settings: GatewaySettings, engines: list[Engine], key: str | None
) -> GatewaySettings:
    """What each worker runs with: the parent's settings, the engines the parent started as
    remote ones, and the placement board shared (each worker is one replica of several)."""
    update: dict[str, object] = {"shared_placements": True}
    if not settings.engine_urls:
        update["engine_urls"] = [engine.url for engine in engines]
        update["engine_api_key"] = SecretStr(key) if key is not None else None
    return settings.model_copy(update=update)


def bind_socket(settings: GatewaySettings) -> socket.socket:
    """The listening socket every worker accepts on (uvicorn's own binding rules)."""
    import uvicorn

    # log_config=None: leave the logging configure_logging set up as it is.
    config = uvicorn.Config(
        "gateway.app:create_app", host=settings.host, port=settings.port, log_config=None
    )
    sock = config.bind_socket()
    sock.set_inheritable(True)
    return sock


def prepare_data_dir(settings: GatewaySettings) -> None:
    """Everything the workers would otherwise all make at once: the registry's tables, the key
    tables, the admin token."""
    from adapters.registry import Registry
    from gateway.auth.admin_token import load_admin_token
    from gateway.auth.key_store import KeyStore

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    load_admin_token(settings)
    Registry(settings.resolved_database_url).close()
    KeyStore.open(settings.resolved_database_url).close()


def _worker_main(settings: GatewaySettings, sock: socket.socket, index: int) -> None:
    """A worker process: one gateway on the shared socket (spawned: a fresh interpreter)."""
    from gateway.commands.serve import run_gateway, serving_loop_factory

    with asyncio.Runner(loop_factory=serving_loop_factory()) as runner:
        runner.run(run_gateway(settings, sockets=[sock], announce=index == 0))


async def run_workers(settings: GatewaySettings, workers: int) -> int:
    """Serve with ``workers`` processes until SIGINT/SIGTERM; the exit code."""
    if not 2 <= workers <= MAX_WORKERS:
        raise ValueError(f"workers must be 2..{MAX_WORKERS}, got {workers}")
    sock = bind_socket(settings)
    await asyncio.to_thread(prepare_data_dir, settings)
    key = None if settings.engine_urls else secrets.token_urlsafe(32)
    engines = build_engines(settings, api_key=key) if not settings.engine_urls else []
    started: list[Engine] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    processes: list[BaseProcess] = []
    code = 0
    try:
        for engine in engines:
            await engine.start()
            started.append(engine)
        context = multiprocessing.get_context("spawn")
        per_worker = worker_settings(settings, engines, key)
        for index in range(workers):
            process = context.Process(
                target=_worker_main,
                args=(per_worker, sock, index),
                name=f"lora-gateway-worker-{index}",
            )
            process.start()
            processes.append(process)
        logger.info(
            "serving on %s:%d with %d workers (pids %s)",
            settings.host,
            sock.getsockname()[1],
            workers,
            ", ".join(str(p.pid) for p in processes),
        )
        while not stop.is_set():
            dead = [p for p in processes if not p.is_alive()]
            if dead:
                logger.error(
                    "worker pid %s exited with %s: stopping the gateway",
                    dead[0].pid,
                    dead[0].exitcode,
                )
                code = 1
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), WATCH_INTERVAL_S)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await asyncio.to_thread(_stop_workers, processes, settings.drain_timeout_s + STOP_GRACE_S)
        sock.close()
        for engine in reversed(started):
            try:
                await engine.stop()
            finally:
                await engine.close_client()
    return code


def _stop_workers(processes: list[BaseProcess], timeout_s: float) -> None:
    for process in processes:
        if process.is_alive() and process.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
    for process in processes:
        process.join(timeout_s)
        if process.is_alive():
            logger.warning("worker pid %s did not stop in %.0f s: killed", process.pid, timeout_s)
            process.kill()
            process.join(5)
