"""Several gateway *processes* in front of the same real vLLM engines, sharing one PostgreSQL.

For tests/integration/test_gateway_replicas.py: :class:`SharedKeyEngine` is a supervised vLLM
whose API key stays the same across restarts (an operator's engine run with a fixed
``--api-key``, reachable by every replica); :func:`start_gateway` runs ``lora-gateway serve`` in
a process group of its own (so a test can SIGKILL it) with its log in a file;
:func:`wait_ready` polls its ``/readyz``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from gateway.engines.managed import ManagedVLLMEngine
from gateway.settings import GatewaySettings


class SharedKeyEngine(ManagedVLLMEngine):
    """A managed vLLM that keeps one API key across restarts (the gateways are told it once)."""

    def __init__(self, settings: GatewaySettings, *, key: str, **options: object) -> None:
        super().__init__(settings, **options)  # type: ignore[arg-type]
        self._fixed_key = key

    async def _use_api_key(self, key: str | None) -> None:
        await super()._use_api_key(self._fixed_key)


@dataclass
class GatewayProcess:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL the whole process group: no shutdown hook runs."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()


def start_gateway(
    name: str, *, port: int, data_dir: Path, env: Mapping[str, str], log_dir: Path
) -> GatewayProcess:
    log_path = log_dir / f"{name}.log"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LORA_GATEWAY_")}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "lora-gateway"),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--data-dir",
                str(data_dir),
                "--log-format",
                "text",
            ],
            env={**clean, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return GatewayProcess(name, port, process, log_path)


async def wait_ready(gateway: GatewayProcess, timeout_s: float) -> None:
    """Until ``/readyz`` answers 200; AssertionError with the log's tail otherwise."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    async with httpx.AsyncClient(timeout=2.0) as http:
        while True:
            assert gateway.process.poll() is None, f"{gateway.name} exited:\n{gateway.log_tail()}"
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"{gateway.url}/readyz")).status_code == 200:
                    return
            assert asyncio.get_running_loop().time() < deadline, (
                f"{gateway.name} not ready after {timeout_s:.0f} s:\n{gateway.log_tail()}"
            )
            await asyncio.sleep(0.2)
