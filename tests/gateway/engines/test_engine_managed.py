"""ManagedVLLMEngine supervision, fast: the child is a FAKE engine (``python -m http.server``
serving a ``health`` file, plus a ``sleep`` grandchild in its process group), so states,
restarts, backoff, stop and the environment are tested in seconds. The real vLLM child is
tested in tests/integration/test_engine_supervision.py.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.engines import managed
from gateway.engines.base import Engine, EngineState
from gateway.engines.basemodels import BaseModelSpec
from gateway.engines.cpu_lora_fix import PLUGIN_NAME
from gateway.engines.managed import ManagedVLLMEngine, restart_delay
from gateway.settings import GatewaySettings


class FakeVLLMEngine(ManagedVLLMEngine):
    """Supervises a stand-in child instead of vLLM: an HTTP server whose /health is a file."""

    def __init__(
        self,
        settings: GatewaySettings,
        root: Path,
        script: str | None = None,
        api_key: str | None = None,
    ) -> None:
        super().__init__(
            settings, name="fake", model=BaseModelSpec(root, "fake-base"), api_key=api_key
        )
        self.root = root
        self.script = script

    def command(self) -> list[str]:
        server = (
            f"{sys.executable} -m http.server {self.port} --bind 127.0.0.1 --directory {self.root}"
        )
        return ["bash", "-c", self.script or f"sleep 300 & exec {server}"]


def _settings(tmp_path: Path, **overrides: object) -> GatewaySettings:
    values: dict[str, object] = {
        "data_dir": tmp_path / "data",
        "engine_health_interval_s": 0.1,
        "engine_restart_backoff_s": 0.1,
        "engine_restart_backoff_max_s": 0.4,
        "engine_startup_timeout_s": 20.0,
    }
    values.update(overrides)
    return GatewaySettings(**values)  # type: ignore[arg-type]


async def _wait_for(engine: Engine, state: EngineState, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while engine.status().state is not state:
        assert time.monotonic() < deadline, f"no {state} within {timeout_s} s: {engine.status()}"
        await asyncio.sleep(0.01)


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def health_root(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    root.mkdir()
    (root / "health").write_text("ok")
    return root


@pytest.fixture
async def fake_engine(tmp_path: Path, health_root: Path) -> AsyncIterator[FakeVLLMEngine]:
    engine = FakeVLLMEngine(_settings(tmp_path), health_root)
    try:
        yield engine
    finally:
        await engine.stop()


async def test_ready_after_health_then_listeners_run_once(fake_engine: FakeVLLMEngine) -> None:
    calls: list[int] = []

    async def on_ready(engine: Engine) -> None:
        calls.append(engine.status().restarts)

    fake_engine.add_ready_listener(on_ready)
    assert fake_engine.status().state is EngineState.STOPPED
    await fake_engine.start()
    assert fake_engine.status().state is EngineState.STARTING
    await fake_engine.wait_ready(10)
    assert fake_engine.status().reason == f"ready (pid {fake_engine.pid})"
    assert calls == [0]
    assert "=== " in fake_engine.log_path.read_text()


async def test_killed_child_goes_down_restarts_and_reruns_listeners(
    fake_engine: FakeVLLMEngine,
) -> None:
    calls: list[int] = []

    async def on_ready(engine: Engine) -> None:
        calls.append(engine.status().restarts)

    fake_engine.add_ready_listener(on_ready)
    await fake_engine.start()
    await fake_engine.wait_ready(10)
    old_pid = fake_engine.kill_process()
    await _wait_for(fake_engine, EngineState.DOWN)
    assert fake_engine.status().reason.startswith("exited with code -9")
    await fake_engine.wait_ready(10)
    assert fake_engine.restarts == 1
    assert calls == [0, 1]
    assert fake_engine.pid != old_pid
    assert _group_gone(old_pid), "the old child's sleep grandchild was left behind"


async def test_unhealthy_child_is_replaced(fake_engine: FakeVLLMEngine, health_root: Path) -> None:
    await fake_engine.start()
    await fake_engine.wait_ready(10)
    first_pid = fake_engine.pid
    (health_root / "health").unlink()  # /health now answers 404
    await _wait_for(fake_engine, EngineState.DOWN)
    assert "unhealthy (3 failed health checks)" in fake_engine.status().reason
    (health_root / "health").write_text("ok")
    await fake_engine.wait_ready(10)
    assert fake_engine.restarts == 1 and fake_engine.pid != first_pid
    assert first_pid is not None and _group_gone(first_pid)


async def test_stop_ends_the_whole_process_group(fake_engine: FakeVLLMEngine) -> None:
    await fake_engine.start()
    await fake_engine.wait_ready(10)
    pid = fake_engine.pid
    assert pid is not None
    await fake_engine.stop()
    assert fake_engine.status().state is EngineState.STOPPED
    assert fake_engine.status().reason == "stopped"
    assert fake_engine.pid is None
    assert _group_gone(pid)
    with pytest.raises(RuntimeError, match="stopped"):
        await fake_engine.wait_ready(1)


async def test_crashing_child_is_restarted_with_backoff(tmp_path: Path, health_root: Path) -> None:
    engine = FakeVLLMEngine(_settings(tmp_path), health_root, script="echo boom; exit 3")
    await engine.start()
    try:
        deadline = time.monotonic() + 10
        while engine.restarts < 3:
            assert time.monotonic() < deadline, engine.status()
            await asyncio.sleep(0.01)
        await _wait_for(engine, EngineState.DOWN)
        assert "exited with code 3" in engine.status().reason
        with pytest.raises(TimeoutError, match="boom"):  # the log's tail is in the error
            await engine.wait_ready(0.3)
    finally:
        await engine.stop()
    assert engine.log_path.read_text().count("boom") >= 3


def test_restart_delay_doubles_for_failed_starts_up_to_the_bound() -> None:
    assert [restart_delay(n, 1.0, 30.0) for n in range(8)] == [1, 1, 2, 4, 8, 16, 30, 30]


async def test_never_healthy_child_hits_the_startup_timeout(
    tmp_path: Path, health_root: Path
) -> None:
    engine = FakeVLLMEngine(
        _settings(tmp_path, engine_startup_timeout_s=0.5), health_root, script="exec sleep 300"
    )
    await engine.start()
    try:
        await _wait_for(engine, EngineState.DOWN)
        assert "not healthy" in engine.status().reason
    finally:
        await engine.stop()


async def test_failed_model_preparation_is_reported(
    tmp_path: Path, health_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        managed, "prepare_command", lambda recipe, out: ["bash", "-c", "echo no space left; exit 5"]
    )
    engine = ManagedVLLMEngine(
        _settings(tmp_path),
        model=BaseModelSpec(tmp_path / "models" / "tiny", "tiny", recipe="tiny"),
    )
    await engine.start()
    try:
        await _wait_for(engine, EngineState.DOWN)
        assert "preparing base model tiny failed with exit code 5" in engine.status().reason
    finally:
        await engine.stop()
    assert "no space left" in engine.log_path.read_text()


def test_command_runs_vllm_module_with_lora_flags(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        max_loras=3,
        max_cpu_loras=5,
        max_lora_rank=32,
        engine_extra_args=["--max-num-seqs", "8"],
    )
    engine = ManagedVLLMEngine(settings, model=BaseModelSpec(tmp_path / "m", "served"))
    command = engine.command()
    assert command[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    flags = dict(zip(command[3::2], command[4::2], strict=False))
    assert flags["--model"] == str(tmp_path / "m")
    assert flags["--served-model-name"] == "served"
    assert flags["--host"] == "127.0.0.1" and flags["--port"] == str(engine.port)
    assert "--enable-lora" in command
    i = command.index("--max-loras")
    assert command[i : i + 6] == [
        "--max-loras",
        "3",
        "--max-cpu-loras",
        "5",
        "--max-lora-rank",
        "32",
    ]
    assert command[-2:] == ["--max-num-seqs", "8"]


@pytest.mark.parametrize(
    ("inherited", "expected"),
    [
        (None, None),
        ("", PLUGIN_NAME),
        ("other", f"other,{PLUGIN_NAME}"),
        (f"{PLUGIN_NAME},other", f"{PLUGIN_NAME},other"),
    ],
)
def test_environment_never_drops_the_lora_fix_plugin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, inherited: str | None, expected: str | None
) -> None:
    if inherited is None:
        monkeypatch.delenv("VLLM_PLUGINS", raising=False)
    else:
        monkeypatch.setenv("VLLM_PLUGINS", inherited)
    env = ManagedVLLMEngine(
        _settings(tmp_path, engine_kv_cache_gib=1.5), model=BaseModelSpec(tmp_path, "m")
    ).environment()
    assert env.get("VLLM_PLUGINS") == expected
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "2"
    assert env["HF_HUB_OFFLINE"] == "1"


def test_extra_env_is_applied_last(tmp_path: Path) -> None:
    engine = ManagedVLLMEngine(
        _settings(tmp_path), model=BaseModelSpec(tmp_path, "m"), extra_env={"VLLM_PLUGINS": "none"}
    )
    assert engine.environment()["VLLM_PLUGINS"] == "none"


async def test_child_gets_sigterm_when_the_gateway_dies(tmp_path: Path, health_root: Path) -> None:
    """A gateway killed with SIGKILL (no stop()) must not leave its engine running."""
    script = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from tests.gateway.engines.test_engine_managed import FakeVLLMEngine, _settings\n"
        "async def main():\n"
        f"    settings = _settings(Path({str(tmp_path)!r}))\n"
        "    sleeper = 'exec ' + sys.executable + ' -c \"import time; time.sleep(300)\"'\n"
        f"    engine = FakeVLLMEngine(settings, Path({str(health_root)!r}), sleeper)\n"
        "    await engine.start()\n"
        "    while engine.pid is None:\n"
        "        await asyncio.sleep(0.01)\n"
        "    print(engine.pid, flush=True)\n"
        "    await asyncio.sleep(300)\n"
        "asyncio.run(main())\n"
    )
    gateway = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE
    )
    assert gateway.stdout is not None
    child_pid = int(await asyncio.wait_for(gateway.stdout.readline(), 30))
    os.kill(child_pid, 0)  # running
    gateway.kill()
    await gateway.wait()
    deadline = time.monotonic() + 10
    while not _group_gone(child_pid):
        assert time.monotonic() < deadline, "the engine child outlived its gateway"
        await asyncio.sleep(0.05)


SECRETS = {
    "LORA_GATEWAY_ADMIN_TOKEN": "admin-token-secret-1",
    "LORA_GATEWAY_API_KEYS": "sk-client-secret-2,sk-client-secret-3",
    "LORA_GATEWAY_ENGINE_API_KEY": "engine-secret-4",
    "LORA_GATEWAY_DATABASE_URL": "postgresql://u:db-secret-5@db/x",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-6",
    "GITHUB_TOKEN": "gh-secret-7",
}
NEEDED = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/home/someone",
    "LANG": "C.UTF-8",
    "TMPDIR": "/tmp",
    "HF_HOME": "/cache/hf",
    "OMP_NUM_THREADS": "2",
    "VLLM_CPU_SGL_KERNEL": "0",
    "CUDA_VISIBLE_DEVICES": "0",
    "PYTHONPATH": "/src",
}


def test_child_environment_is_an_allow_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in {**SECRETS, **NEEDED}.items():
        monkeypatch.setenv(key, value)
    settings = _settings(
        tmp_path,
        admin_token="admin-flag-secret-8",
        api_keys=["sk-flag-secret-9"],
    )
    env = ManagedVLLMEngine(settings, model=BaseModelSpec(tmp_path, "m")).environment()
    for key, value in NEEDED.items():
        assert env[key] == value, key
    leaked = [key for key in env if key in SECRETS or key.startswith("LORA_GATEWAY_")]
    assert leaked == []
    text = "\n".join(f"{k}={v}" for k, v in env.items())
    for secret in [*SECRETS.values(), "admin-flag-secret-8", "sk-flag-secret-9"]:
        assert secret not in text


async def test_spawned_child_sees_no_gateway_secret(
    tmp_path: Path, health_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    dump = tmp_path / "child.env"
    server = f"{sys.executable} -m http.server 0 --bind 127.0.0.1"
    script = f"env > {dump}.part && mv {dump}.part {dump}; exec {server}"
    engine = FakeVLLMEngine(_settings(tmp_path), health_root, script=script)
    await engine.start()
    try:
        deadline = time.monotonic() + 10
        while not dump.exists():
            assert time.monotonic() < deadline, "the child never wrote its environment"
            await asyncio.sleep(0.05)
    finally:
        await engine.stop()
    seen = dump.read_text()
    assert "PATH=" in seen and "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in seen
    for secret in SECRETS.values():
        assert secret not in seen
    assert "LORA_GATEWAY_" not in seen


async def test_child_is_bound_to_its_cores(tmp_path: Path, health_root: Path) -> None:
    core = max(os.sched_getaffinity(0))
    dump = tmp_path / "child.cpus"
    server = f"{sys.executable} -m http.server 0 --bind 127.0.0.1"
    script = (
        f"grep Cpus_allowed_list /proc/self/status > {dump}.part && "
        f"echo bind=$VLLM_CPU_OMP_THREADS_BIND >> {dump}.part && mv {dump}.part {dump}; "
        f"exec {server}"
    )
    engine = FakeVLLMEngine(_settings(tmp_path), health_root, script=script)
    engine.cpus = (core,)
    await engine.start()
    try:
        deadline = time.monotonic() + 10
        while not dump.exists():
            assert time.monotonic() < deadline, "the child never wrote its CPU list"
            await asyncio.sleep(0.05)
    finally:
        await engine.stop()
    allowed, bind = dump.read_text().splitlines()
    assert allowed.split()[-1] == str(core)
    assert bind == f"bind={core}"


def test_engines_split_the_cores_and_get_their_own_names_ports_and_logs(
    tmp_path: Path,
) -> None:
    from gateway.engines.factory import build_engines, split_cores

    assert split_cores([0, 1], 2) == [[0], [1]]
    assert split_cores([0, 1, 2, 3, 4], 2) == [[0, 1, 2], [3, 4]]
    assert split_cores([0, 1], 3) == [[0], [1], [0]]
    with pytest.raises(ValueError, match="cannot split"):
        split_cores([], 2)
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    settings = _settings(tmp_path, engines=2, base_model=str(model))
    engines = build_engines(settings)
    assert [e.name for e in engines] == ["engine-0", "engine-1"]
    assert all(isinstance(e, ManagedVLLMEngine) for e in engines)
    managed_engines = [e for e in engines if isinstance(e, ManagedVLLMEngine)]
    assert len({e.port for e in managed_engines}) == 2
    assert len({e.log_path for e in managed_engines}) == 2
    cores = sorted(os.sched_getaffinity(0))
    assert [e.cpus for e in managed_engines] == [tuple(g) for g in split_cores(cores, 2)]
