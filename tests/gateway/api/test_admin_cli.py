"""``lora-gateway adapters add|list|show|rm`` against a real HTTP server (uvicorn, port 0).

The gateway app is real; its engine is the FAKE vLLM of loadtest/fake_vllm (no vLLM here). The token
comes from the data dir's admin_token file, as on the gateway's own machine.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from typer.testing import CliRunner

from gateway.app import create_app
from gateway.cli import build_cli
from gateway.lifecycle.startup import build_lifecycle
from gateway.settings import GatewaySettings
from loadtest.fake_vllm import FakeVLLM
from tests.adapters.builders import write_adapter, write_base_model
from tests.support.fake_engine import FakeEngine
from tests.support.s3_server import S3Server

BASE = "tinybase"


@dataclass
class Served:
    url: str
    data_dir: Path
    roots: Path
    upstream: FakeVLLM

    def cli(self, *args: str) -> tuple[int, str]:
        result = CliRunner().invoke(build_cli(), ["adapters", *args])
        return result.exit_code, result.output


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    with serving(tmp_path) as served:
        yield served


@contextmanager
def serving(tmp_path: Path, **settings_kw: Any) -> Iterator[Served]:
    data_dir = tmp_path / "data"
    settings = GatewaySettings(
        data_dir=data_dir,
        admin_token=None,
        base_model=str(write_base_model(tmp_path / BASE)),
        **settings_kw,
    )
    upstream = FakeVLLM()
    engine = FakeEngine(upstream, base_model=BASE)
    lifecycle = build_lifecycle(settings, [engine])
    asyncio.run(lifecycle.start())
    app = create_app(settings, engines=[engine], lifecycle=lifecycle)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield Served(
            url=f"http://127.0.0.1:{port}",
            data_dir=data_dir,
            roots=settings.managed_adapters_dir,
            upstream=upstream,
        )
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        asyncio.run(lifecycle.close())


def test_add_list_show_rm(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LORA_GATEWAY_ADMIN_TOKEN", raising=False)
    common = ["--url", served.url, "--data-dir", str(served.data_dir)]
    path = write_adapter(served.roots / "a1", base_model=BASE, seed=1)
    code, out = served.cli("add", "a1", str(path), "--load", *common)
    assert code == 0, out
    assert "registered a1 v1 loaded" in out
    assert len(served.upstream.loaded) == 1

    code, out = served.cli("list", *common)
    assert code == 0 and "a1" in out and "loaded" in out

    other = write_adapter(served.roots / "a1-new", base_model=BASE, seed=2)
    code, out = served.cli("add", "a1", str(other), *common)
    assert code == 1 and "different content" in out and "HTTP 409, adapter_conflict" in out
    code, out = served.cli("add", "a1", str(other), "--new-version", *common)
    assert code == 0 and "a1 v2" in out
    code, out = served.cli("show", "a1", *common)
    assert code == 0 and "a1 v2" in out and str(other.resolve())[:20] in out

    code, out = served.cli("rm", "a1", *common)
    assert code == 0 and "removed a1" in out
    code, out = served.cli("list", *common)
    assert code == 0 and "no adapters registered" in out
    assert served.upstream.loaded == {}


def test_errors_are_clear(served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LORA_GATEWAY_ADMIN_TOKEN", raising=False)
    code, out = served.cli("list", "--url", served.url, "--admin-token", "wrong")
    assert code == 1 and "admin token is not valid (HTTP 403" in out
    code, out = served.cli("list", "--url", "http://127.0.0.1:9", "--admin-token", "x")
    assert code == 1 and "cannot reach the gateway" in out
    code, out = served.cli("list", "--url", served.url, "--data-dir", str(tmp_path / "empty"))
    assert code == 1 and "no admin token" in out
    code, out = served.cli("rm", "ghost", "--url", served.url, "--data-dir", str(served.data_dir))
    assert code == 1 and "no adapter named 'ghost'" in out and "HTTP 404" in out


def test_add_from_s3_and_show(
    tmp_path: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LORA_GATEWAY_ADMIN_TOKEN", raising=False)
    path = write_adapter(tmp_path / "src", base_model=BASE, seed=3)
    client = s3_server.client()
    client.create_bucket(Bucket="cli-bucket")
    for file in path.iterdir():
        client.put_object(Bucket="cli-bucket", Key=f"x/{file.name}", Body=file.read_bytes())
    with serving(tmp_path, s3_endpoint_url=s3_server.endpoint_url, fetch_attempts=1) as served:
        common = ["--url", served.url, "--data-dir", str(served.data_dir)]
        code, out = served.cli("add", "s1", "s3://cli-bucket/x", *common)
        assert code == 0, out
        assert "registered s1 v1 registered" in out
        code, out = served.cli("show", "s1", *common)
        assert code == 0 and "s3://cli-bucket/x" in out
        code, out = served.cli("add", "s2", "s3://cli-bucket/missing", *common)
        assert code == 1 and "source_not_found" in out
        code, out = served.cli("show", "s2", *common)
        assert code == 0 and "fetching s2 from s3://cli-bucket/missing failed" in out
        code, out = served.cli("list", *common)
        assert code == 0 and "s1" in out and "fetching s2 from" in out


def test_status_on_one_screen(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LORA_GATEWAY_ADMIN_TOKEN", raising=False)
    common = ["--url", served.url, "--data-dir", str(served.data_dir)]
    path = write_adapter(served.roots / "a1", base_model=BASE, seed=1)
    assert served.cli("add", "a1", str(path), "--load", *common)[0] == 0
    result = CliRunner().invoke(build_cli(), ["status", *common])
    assert result.exit_code == 0, result.output
    assert f"gateway {served.url}: ready, 0 request(s) in flight, 1 of 1 adapter(s) loaded" in (
        result.output
    )
    engine_row = next(line for line in result.output.splitlines() if "fake" in line)
    assert "ready" in engine_row and "1/2" in engine_row
    assert any("a1" in line and "loaded" in line for line in result.output.splitlines())
    raw = CliRunner().invoke(build_cli(), ["status", "--json", *common])
    assert raw.exit_code == 0 and '"object": "gateway.status"' in raw.output
    bad = CliRunner().invoke(build_cli(), ["status", "--url", served.url, "--admin-token", "no"])
    assert bad.exit_code == 1 and "admin token is not valid" in bad.output
