"""``lora-gateway serve --workers 2`` over the FAKE upstream: two processes on one port, one
registry (SQLite, in the data dir). Real processes and sockets; the engine is the fake, served
from this test's event loop.

Which worker answers is the kernel's choice per connection, so the test keeps one connection
per client (``max_connections=1``): ``GET /admin/status`` says which replica answered on it
(``this``), and everything sent on that connection reaches the same worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from loadtest.fake_vllm import FakeBehaviour, FakeVLLM
from loadtest.fake_vllm.server import serving
from loadtest.procs import free_port
from tests.adapters.builders import write_adapter, write_base_model
from tests.gateway.openai_env import BASE

TOKEN = "admin-token-for-workers"
READY_TIMEOUT_S = 90.0


async def _replica_on(http: httpx.AsyncClient) -> str:
    status = (await http.get("/admin/status")).json()
    (this,) = [replica["id"] for replica in status["replicas"] if replica["this"]]
    return str(this)


def _client(url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=url,
        headers={"Authorization": f"Bearer {TOKEN}"},
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        timeout=10.0,
    )


def _start(tmp_path: Path, engine_url: str, port: int) -> subprocess.Popen[bytes]:
    base_dir = write_base_model(tmp_path / "models" / BASE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORA_GATEWAY_")}
    env["LORA_GATEWAY_ADMIN_TOKEN"] = TOKEN
    with (tmp_path / "gateway.log").open("wb") as log:
        return subprocess.Popen(
            [
                str(Path(sys.executable).parent / "lora-gateway"),
                "serve",
                "--workers",
                "2",
                "--engine-url",
                engine_url,
                "--base-model",
                str(base_dir),
                "--port",
                str(port),
                "--data-dir",
                str(tmp_path / "data"),
                "--log-format",
                "text",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@contextlib.asynccontextmanager
async def _gateway(
    tmp_path: Path, engine_url: str, port: int
) -> AsyncIterator[subprocess.Popen[bytes]]:
    process = _start(tmp_path, engine_url, port)
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, 60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def _log(tmp_path: Path) -> str:
    return (tmp_path / "gateway.log").read_text(errors="replace")[-4000:]


async def test_two_workers_answer_on_one_port_and_share_the_registry(tmp_path: Path) -> None:
    adapter = write_adapter(tmp_path / "data" / "adapters" / "mine", base_model=BASE, seed=1)
    fake = FakeVLLM(FakeBehaviour(model=BASE, chunks=2))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    async with serving(fake) as engine_url, _gateway(tmp_path, engine_url, port) as process:
        # Fresh connections until both workers have answered, each naming itself.
        clients: dict[str, httpx.AsyncClient] = {}
        deadline = asyncio.get_running_loop().time() + READY_TIMEOUT_S
        try:
            while len(clients) < 2:
                assert process.poll() is None, _log(tmp_path)
                assert asyncio.get_running_loop().time() < deadline, _log(tmp_path)
                http = _client(url)
                try:
                    replica = await _replica_on(http)
                except (httpx.HTTPError, ValueError):
                    await http.aclose()
                    await asyncio.sleep(0.2)
                    continue
                if replica in clients:
                    await http.aclose()
                else:
                    clients[replica] = http
            (first, one), (second, other) = clients.items()
            pids = {replica.split("-")[-2] for replica in clients}
            assert len(pids) == 2 and str(process.pid) not in pids  # two workers, not the parent

            # Registered through one worker...
            response = await one.post(
                "/admin/adapters", json={"name": "mine", "path": str(adapter)}
            )
            assert response.status_code == 201, response.text
            assert await _replica_on(one) == first
            # ...served through the other, once it has followed the registry.
            chat = {"model": "mine", "messages": [{"role": "user", "content": "hi"}]}
            for _ in range(100):
                answer = await other.post("/v1/chat/completions", json=chat)
                if answer.status_code != 404:
                    break
                await asyncio.sleep(0.1)
            assert answer.status_code == 200, answer.text
            assert answer.json()["model"] == "mine"
            assert await _replica_on(other) == second
            assert (await one.post("/v1/chat/completions", json=chat)).status_code == 200
        finally:
            for http in clients.values():
                await http.aclose()
        os.killpg(process.pid, signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 60) == 0, _log(tmp_path)


@pytest.mark.parametrize("workers", ["0", "65"])
def test_workers_out_of_range_are_refused(workers: str) -> None:
    from typer.testing import CliRunner

    from gateway.cli import build_cli

    result = CliRunner().invoke(build_cli(), ["serve", "--workers", workers])
    assert result.exit_code == 2
    assert "--workers" in result.output


def test_workers_reach_the_parents_managed_engines_as_remote_ones(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from gateway.commands.workers import worker_settings
    from gateway.settings import GatewaySettings

    settings = GatewaySettings(data_dir=tmp_path, engines=2)
    engines = [SimpleNamespace(url=f"http://127.0.0.1:{port}") for port in (9001, 9002)]
    worker = worker_settings(settings, engines, "the-engine-key")  # type: ignore[arg-type]
    assert worker.engine_urls == ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]
    assert worker.engine_api_key is not None
    assert worker.engine_api_key.get_secret_value() == "the-engine-key"
    assert worker.shares_placements and worker.data_dir == settings.data_dir
    # Engines run elsewhere stay as they are; the board is shared all the same.
    remote = GatewaySettings(data_dir=tmp_path, engine_urls=["http://e:8000"])
    assert worker_settings(remote, [], None).engine_urls == ["http://e:8000"]
    assert worker_settings(remote, [], None).shares_placements
