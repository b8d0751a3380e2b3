"""A real Prometheus scrapes the gateway's /metrics; PromQL sees exactly what was sent.

Prometheus is Debian's ``prometheus`` binary (``scripts/ensure-prometheus.sh``), started per test
on a free port with its own config (1 s scrape and rule interval, deploy/prometheus/alerts.yml
loaded) and storage in a temp dir, and stopped at the end.

1. ``test_prometheus_scrapes_a_gateway_metrics_registry``: no engine. A GatewayMetrics fed known
   traffic through the request observer, served by the real /metrics route. Also: every alert
   rule evaluates healthy and every dashboard expression runs on the real PromQL engine.
2. ``test_prometheus_counts_real_requests_to_two_adapters``: the real gateway app
   (``create_app``, its own ``/metrics``) in front of the shared real vLLM, two adapters loaded
   straight onto the engine, the official OpenAI SDK, streams and non-streams.
3. ``test_full_app_admin_api_to_prometheus``: the whole shape (create_app's own lifecycle and
   ``/metrics``, adapters registered through ``POST /admin/adapters``, the lifecycle's load
   counters).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi import FastAPI
from openai import AsyncOpenAI, NotFoundError
from pydantic import SecretStr
from starlette.types import ASGIApp

import gateway.app as gateway_app
from gateway.api.metrics import build_metrics_router
from gateway.engines.managed import ManagedVLLMEngine
from gateway.inference.record import RequestInfo
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.request_metrics import RequestMetricsObserver
from gateway.settings import GatewaySettings
from tests.support.gateway_server import (
    StaticEngine,
    serve_in_loop,
    serve_in_thread,
    with_adapters_dir,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "lora-gateway.json"
JOB = "lora-gateway"
READY_TIMEOUT_S = 30.0
SCRAPE_WAIT_S = 20.0


# --- a real Prometheus --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Prometheus:
    """A running Prometheus server and its HTTP API."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.AsyncClient(base_url=url, timeout=10.0)

    async def query(self, promql: str) -> list[dict[str, Any]]:
        response = await self.http.get("/api/v1/query", params={"query": promql})
        body = response.json()
        assert body["status"] == "success", f"{promql}: {body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def by_label(self, promql: str, label: str) -> dict[str, float]:
        return {
            sample["metric"].get(label, ""): float(sample["value"][1])
            for sample in await self.query(promql)
        }

    async def wait_for(
        self, promql: str, label: str, expected: dict[str, float], timeout_s: float = SCRAPE_WAIT_S
    ) -> None:
        """Poll until ``promql`` grouped by ``label`` equals ``expected`` (scrapes are 1 s)."""
        deadline = time.monotonic() + timeout_s
        seen: dict[str, float] = {}
        while time.monotonic() < deadline:
            seen = await self.by_label(promql, label)
            if seen == expected:
                return
            await asyncio.sleep(0.5)
        raise AssertionError(f"{promql} by {label}: expected {expected}, Prometheus has {seen}")


def write_config(directory: Path, target: str) -> Path:
    """A config scraping ``target`` every second, with deploy/'s alert rules loaded."""
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {"job_name": JOB, "static_configs": [{"targets": [target.removeprefix("http://")]}]}
        ],
    }
    directory.mkdir(parents=True, exist_ok=True)
    config_file = directory / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    return config_file


@asynccontextmanager
async def run_prometheus(tmp_path: Path, target: str) -> AsyncIterator[Prometheus]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed: run scripts/ensure-prometheus.sh (as root)")
    config_file = write_config(tmp_path, target)
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        binary,
        f"--config.file={config_file}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    prometheus = Prometheus(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if process.returncode is not None:
                pytest.fail(f"prometheus exited: {(tmp_path / 'prometheus.log').read_text()}")
            try:
                if (await prometheus.http.get("/-/ready")).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("prometheus did not become ready")
            await asyncio.sleep(0.1)
        yield prometheus
    finally:
        await prometheus.http.aclose()
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        log.close()


# --- 1: a GatewayMetrics registry with known counts ---------------------------------------------

TOKEN_EVENT = b'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}\n\n'


def simulate(
    observer: RequestMetricsObserver,
    model: str,
    status: int,
    usage: tuple[int, int] | None,
    tokens: int,
) -> None:
    """One request as the middleware and proxy report it."""
    info = RequestInfo("r", "POST", "/v1/chat/completions", time.perf_counter())
    observer.request_started(info)
    info.model, info.status = model, status
    for _ in range(tokens):
        observer.stream_event(info, TOKEN_EVENT)
    if usage is not None:
        info.prompt_tokens, info.completion_tokens = usage
    info.finished = time.perf_counter()
    observer.request_finished(info)


def dashboard_queries() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    return [e.replace("$__rate_interval", "1m").replace("$adapter", ".*") for e in exprs]


async def test_prometheus_scrapes_a_gateway_metrics_registry(tmp_path: Path) -> None:
    names = {"legal": "/adapters/legal", "medical": "/adapters/medical"}
    engine = StaticEngine("http://127.0.0.1:9", "tiny", name="engine-0")
    metrics = GatewayMetrics(
        engines=[engine], registered_adapters=names.keys, loaded_adapters=lambda: {"engine-0": 2}
    )
    observer = RequestMetricsObserver(metrics)
    app = FastAPI()
    app.include_router(build_metrics_router(metrics))

    async with serve_in_loop(app) as url, run_prometheus(tmp_path, url) as prometheus:
        # Wave 1, scraped; then wave 2: the counters Prometheus holds must be the sums.
        for _ in range(4):
            simulate(observer, "legal", 200, (11, 5), tokens=5)
        simulate(observer, "medical", 200, (13, 8), tokens=0)
        await prometheus.wait_for(
            f'sum by (adapter) (lora_gateway_requests_total{{job="{JOB}"}})',
            "adapter",
            {"legal": 4, "medical": 1},
        )
        for _ in range(3):
            simulate(observer, "legal", 200, (11, 5), tokens=5)
        simulate(observer, "medical", 200, (13, 8), tokens=0)
        simulate(observer, "medical", 200, (13, 8), tokens=0)
        simulate(observer, "medical", 503, None, tokens=0)
        simulate(observer, "someone-elses-model", 404, None, tokens=0)
        metrics.adapter_events.on_load("legal", 0.3)
        metrics.adapter_events.on_load_failed("medical")

        await prometheus.wait_for(
            "sum by (adapter) (lora_gateway_requests_total)",
            "adapter",
            {"legal": 7, "medical": 4, "__other__": 1},
        )
        await prometheus.wait_for(
            "sum by (adapter) (lora_gateway_prompt_tokens_total)",
            "adapter",
            {"legal": 77, "medical": 39, "__other__": 0},
        )
        await prometheus.wait_for(
            "sum by (adapter) (lora_gateway_completion_tokens_total)",
            "adapter",
            {"legal": 35, "medical": 24, "__other__": 0},
        )
        await prometheus.wait_for(
            'sum by (status_code) (lora_gateway_requests_total{adapter="medical"})',
            "status_code",
            {"200": 3, "503": 1},
        )
        await prometheus.wait_for(
            "sum by (adapter) (lora_gateway_time_to_first_token_seconds_count)",
            "adapter",
            {"legal": 7, "medical": 0, "__other__": 0},
        )
        await prometheus.wait_for(
            "sum by (adapter) (lora_gateway_inter_token_latency_seconds_count)",
            "adapter",
            {"legal": 28, "medical": 0, "__other__": 0},
        )
        await prometheus.wait_for(
            "lora_gateway_adapter_load_failures_total", "adapter", {"medical": 1}
        )
        await prometheus.wait_for("lora_gateway_engine_up", "engine", {"engine-0": 1})
        await prometheus.wait_for("lora_gateway_adapters_loaded", "engine", {"engine-0": 2})
        await prometheus.wait_for("lora_gateway_adapters_registered", "job", {JOB: 2})
        await prometheus.wait_for(f'up{{job="{JOB}"}}', "job", {JOB: 1})

        # The deploy/ rules and dashboard on the real PromQL engine: every alert rule is
        # evaluated without error, every dashboard query runs (syntax, functions, matchers).
        deadline = time.monotonic() + SCRAPE_WAIT_S
        while True:
            rules = (await prometheus.http.get("/api/v1/rules")).json()["data"]["groups"]
            evaluated = [
                r
                for g in rules
                for r in g["rules"]
                if r.get("lastEvaluation", "0001")[:4] != "0001"
            ]
            if len(evaluated) == sum(len(g["rules"]) for g in rules) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        all_rules = [r for g in rules for r in g["rules"]]
        assert len(all_rules) == 9
        assert [
            (r["name"], r["health"], r.get("lastError", ""))
            for r in all_rules
            if r["health"] != "ok"
        ] == []
        for query in dashboard_queries():
            await prometheus.query(query)  # asserts status success
        # A dashboard query gives numbers per adapter (__other__ may have one sample only yet).
        rates = await prometheus.by_label(
            "sum by (adapter) (rate(lora_gateway_requests_total[1m]))", "adapter"
        )
        assert rates["legal"] > 0 and rates["medical"] > 0


# --- 2: the real gateway in front of a real vLLM ------------------------------------------------


@contextmanager
def gateway_with_adapters(
    settings: GatewaySettings,
    engine_url: str,
    base_model: str,
    adapter_dirs: dict[str, Path],
    engine_api_key: str | None = None,
) -> Iterator[str]:
    """create_app (its own metrics) over ``--adapters-dir`` adapters, served from a thread."""
    settings = with_adapters_dir(settings, adapter_dirs)

    async def build(stack: AsyncExitStack) -> ASGIApp:
        engine = StaticEngine(engine_url, base_model, name="engine-0", api_key=engine_api_key)
        stack.push_async_callback(engine.close_client)
        return gateway_app.create_app(settings, engines=[engine])

    with serve_in_thread(build) as url:
        yield url


async def test_prometheus_counts_real_requests_to_two_adapters(
    vllm_engine: ManagedVLLMEngine,
    engine_settings: GatewaySettings,
    tiny_adapters: dict[str, Path],
    tmp_path: Path,
) -> None:
    settings = engine_settings.model_copy(update={"data_dir": tmp_path / "gateway"})
    dirs = {"obs-a1": tiny_adapters["a1"], "obs-a2": tiny_adapters["a2"]}
    with gateway_with_adapters(
        settings, vllm_engine.url, vllm_engine.base_model, dirs, vllm_engine.api_key
    ) as url:
        client = AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        async with run_prometheus(tmp_path / "prom", url) as prometheus:
            sent = await send_traffic(client)
            await client.close()
            await assert_prometheus_matches(prometheus, sent)
            # The engine's own view, through the gateway: both adapters were seen on engine-0.
            await prometheus.wait_for(
                "count by (adapter) (lora_gateway_engine_adapter_running_requests"
                '{engine="engine-0",adapter=~"obs-.*"})',
                "adapter",
                {"obs-a1": 1, "obs-a2": 1},
            )


Sent = dict[str, dict[str, float]]


async def send_traffic(client: AsyncOpenAI) -> Sent:
    """Streams and non-streams to both adapters, chat and completions; usage as clients see it."""
    sent: Sent = {"requests": {}, "prompt": {}, "completion": {}, "streams": {}}

    def count(adapter: str, prompt: int, completion: int, stream: bool) -> None:
        for key, value in (
            ("requests", 1),
            ("prompt", prompt),
            ("completion", completion),
            ("streams", int(stream)),
        ):
            sent[key][adapter] = sent[key].get(adapter, 0) + value

    async def chat(model: str, n: int) -> None:
        response = await client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": f"Say {n} things."}],
            max_tokens=4 + n,
            temperature=0,
        )
        assert response.usage is not None
        count(model, response.usage.prompt_tokens, response.usage.completion_tokens, False)

    async def stream_chat(model: str, n: int) -> None:
        stream = await client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": f"Count to {n}."}],
            max_tokens=6 + n,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        usage = None
        async for chunk in stream:
            usage = chunk.usage or usage
        assert usage is not None
        count(model, usage.prompt_tokens, usage.completion_tokens, True)

    async def completion(model: str, n: int) -> None:
        response = await client.completions.create(
            model=model, prompt=f"The {n} quick", max_tokens=3 + n, temperature=0
        )
        assert response.usage is not None
        count(model, response.usage.prompt_tokens, response.usage.completion_tokens, False)

    await asyncio.gather(
        chat("obs-a1", 1),
        chat("obs-a1", 2),
        stream_chat("obs-a1", 3),
        completion("obs-a1", 4),
        chat("obs-a2", 5),
        stream_chat("obs-a2", 6),
        stream_chat("obs-a2", 7),
        completion("obs-a2", 8),
        completion("obs-a2", 9),
    )
    with pytest.raises(NotFoundError):
        await client.chat.completions.create(
            model="not-registered", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    sent["requests"]["__other__"] = 1
    return sent


async def assert_prometheus_matches(prometheus: Prometheus, sent: Sent) -> None:
    others = {"__other__": 0.0}
    await prometheus.wait_for(
        "sum by (adapter) (lora_gateway_requests_total)", "adapter", sent["requests"]
    )
    answered = {adapter: n for adapter, n in sent["requests"].items() if adapter != "__other__"}
    await prometheus.wait_for(
        'sum by (adapter) (lora_gateway_requests_total{status_code="200"})', "adapter", answered
    )
    await prometheus.wait_for(
        'sum by (adapter) (lora_gateway_requests_total{status_code="404"})',
        "adapter",
        {"__other__": 1},
    )
    await prometheus.wait_for(
        "sum by (adapter) (lora_gateway_prompt_tokens_total)",
        "adapter",
        {**sent["prompt"], **others},
    )
    await prometheus.wait_for(
        "sum by (adapter) (lora_gateway_completion_tokens_total)",
        "adapter",
        {**sent["completion"], **others},
    )
    await prometheus.wait_for(
        "sum by (adapter) (lora_gateway_time_to_first_token_seconds_count)",
        "adapter",
        {**sent["streams"], **others},
    )
    await prometheus.wait_for("sum(lora_gateway_in_flight_requests)", "", {"": 0})


# --- 3: the finished shape: create_app's own metrics and the admin API -------------------------


async def test_full_app_admin_api_to_prometheus(
    vllm_engine: ManagedVLLMEngine,
    engine_settings: GatewaySettings,
    tiny_adapters: dict[str, Path],
    tmp_path: Path,
) -> None:
    token = "obs-admin-token-0123456789abcdef"
    settings = engine_settings.model_copy(
        update={
            "data_dir": tmp_path / "gateway",
            "admin_token": SecretStr(token),  # model_copy does not validate
            "adapter_roots": [path.parent for path in tiny_adapters.values()],
        }
    )

    async def build(stack: AsyncExitStack) -> ASGIApp:
        engine = StaticEngine(
            vllm_engine.url, vllm_engine.base_model, name="engine-0", api_key=vllm_engine.api_key
        )
        stack.push_async_callback(engine.close_client)
        return gateway_app.create_app(settings, engines=[engine])

    with serve_in_thread(build) as url:
        async with httpx.AsyncClient(base_url=url, timeout=60) as admin:
            for public, source in (("obs-full-a1", "a1"), ("obs-full-a2", "a2")):
                registered = await admin.post(
                    "/admin/adapters",
                    json={"name": public, "path": str(tiny_adapters[source]), "load": True},
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert registered.status_code in (200, 201), registered.text
            assert (await admin.get("/metrics")).status_code == 200, "create_app serves /metrics"
        client = AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        async with run_prometheus(tmp_path / "prom", url) as prometheus:
            sent: Sent = {"requests": {}, "prompt": {}, "completion": {}}
            for model, rounds in (("obs-full-a1", 3), ("obs-full-a2", 2)):
                for i in range(rounds):
                    answer = await client.chat.completions.create(
                        model=model,
                        messages=[{"role": "user", "content": f"n {i}"}],
                        max_tokens=5,
                        temperature=0,
                    )
                    assert answer.usage is not None
                    for key, value in (
                        ("requests", 1),
                        ("prompt", answer.usage.prompt_tokens),
                        ("completion", answer.usage.completion_tokens),
                    ):
                        sent[key][model] = sent[key].get(model, 0) + value
            await client.close()
            for promql, key in (
                ("lora_gateway_requests_total", "requests"),
                ("lora_gateway_prompt_tokens_total", "prompt"),
                ("lora_gateway_completion_tokens_total", "completion"),
            ):
                await prometheus.wait_for(
                    f'sum by (adapter) ({promql}{{adapter=~"obs-full-.*"}})', "adapter", sent[key]
                )
            await prometheus.wait_for(
                'lora_gateway_adapter_loads_total{adapter=~"obs-full-.*"} > 0',
                "adapter",
                {"obs-full-a1": 1, "obs-full-a2": 1},
            )
