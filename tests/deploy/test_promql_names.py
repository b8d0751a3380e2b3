"""Every PromQL expression in deploy/ names series that really exist, with labels they have.

"Really exist" means: in the text the gateway's :class:`GatewayMetrics` (plus the engine
activity collector) renders after some traffic, in a real vLLM 0.32 ``/metrics`` page
(tests/gateway/fixtures), or ``up``. Prometheus adds ``job`` and ``instance`` at scrape time.
This catches a renamed metric or a misspelt label that promtool cannot (it only checks syntax).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.engines.client import EngineClient
from gateway.inference.record import RequestInfo
from gateway.observability.engine_activity import EngineAdapterActivity
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.request_metrics import RequestMetricsObserver
from tests.deploy.paths import DEPLOY, ROOT
from tests.support.gateway_server import StaticEngine

VLLM_PAGE = ROOT / "tests" / "gateway" / "fixtures" / "vllm-0.32-metrics-busy-switching.txt"
SCRAPE_LABELS = {"job", "instance"}
SERIES = re.compile(r"(?<![\w:])(lora_gateway_\w+|vllm:[\w:]+|up)(?![\w:(])\s*(\{[^}]*\})?")
MATCHER = re.compile(r'(\w+)\s*(?:=~|!~|!=|=)\s*"')
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def sample_labels(text: str) -> dict[str, set[str]]:
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    return labels


def gateway_exposition() -> str:
    """What a gateway with one engine, two adapters and some traffic renders."""
    engine = StaticEngine("http://engine.test", "tiny", name="engine-0")
    engine._client = EngineClient(engine.url)
    engine._client.http = httpx.AsyncClient(
        base_url=engine.url,
        transport=httpx.MockTransport(lambda _: httpx.Response(200, text=VLLM_PAGE.read_text())),
    )
    names = {"a1": "/a", "legal-lora": "/b"}
    metrics = GatewayMetrics(
        engines=[engine], registered_adapters=names.keys, loaded_adapters=lambda: {"engine-0": 2}
    )
    activity = EngineAdapterActivity([engine], lambda n: n.split("@")[0], registry=metrics.registry)
    metrics.add_scrape_hook(activity.refresh)
    observer = RequestMetricsObserver(metrics)
    info = RequestInfo("r", "POST", "/v1/chat/completions", time.perf_counter())
    observer.request_started(info)
    info.model, info.status, info.prompt_tokens, info.completion_tokens = "a1", 200, 3, 4
    for _ in range(3):
        observer.stream_event(info, b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n')
    observer.request_finished(info)
    events = metrics.adapter_events
    events.on_load("a1", 0.2)
    events.on_unload("a1")
    events.on_evict("a1")
    events.on_load_failed("a1")
    asyncio.run(metrics.prepare_scrape())
    return metrics.render().decode()


@pytest.fixture(scope="module")
def exposed() -> dict[str, set[str]]:
    labels = sample_labels(gateway_exposition())
    labels.update(sample_labels(VLLM_PAGE.read_text()))
    labels["up"] = set()
    return labels


def strings_in(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings_in(value)


def alert_expressions() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    return json.loads((DEPLOY / "grafana" / "dashboards" / "lora-gateway.json").read_text())


def dashboard_expressions() -> list[str]:
    board = dashboard()
    exprs = [target["expr"] for panel in board["panels"] for target in panel.get("targets", [])]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            exprs.append(variable["definition"])
    return exprs


def problems_in(expr: str, exposed: dict[str, set[str]]) -> list[str]:
    problems = []
    found = SERIES.findall(expr)
    if not found:
        problems.append("names no lora_gateway_ / vllm: / up series")
    names_here: set[str] = set()
    for name, selector in found:
        if name not in exposed:
            problems.append(f"unknown series {name}")
            continue
        names_here.add(name)
        for label in MATCHER.findall(selector or ""):
            if label not in exposed[name] | SCRAPE_LABELS:
                problems.append(f"{name} has no label {label!r}")
    known = set().union(*(exposed[n] for n in names_here)) | SCRAPE_LABELS if names_here else set()
    for group in GROUPING.findall(expr):
        for label in filter(None, (part.strip() for part in group.split(","))):
            if names_here and label not in known:
                problems.append(f"grouping by {label!r}, which none of {sorted(names_here)} has")
    return problems


def test_the_exposition_has_what_the_families_promise(exposed: dict[str, set[str]]) -> None:
    # Guard the guard: the reference set is the real thing, not empty or partial.
    assert exposed["lora_gateway_requests_total"] >= {"model", "adapter", "status_code"}
    assert exposed["lora_gateway_time_to_first_token_seconds_bucket"] >= {"adapter", "le"}
    assert exposed["lora_gateway_engine_adapter_running_requests"] == {"engine", "adapter"}
    assert "vllm:kv_cache_usage_perc" in exposed


@pytest.mark.parametrize("expr", alert_expressions())
def test_alert_expression_names_real_series(expr: str, exposed: dict[str, set[str]]) -> None:
    assert problems_in(expr, exposed) == []


@pytest.mark.parametrize("expr", dashboard_expressions())
def test_dashboard_expression_names_real_series(expr: str, exposed: dict[str, set[str]]) -> None:
    assert problems_in(expr, exposed) == []


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("rate(lora_gateway_request_total[5m])", "unknown series lora_gateway_request_total"),
        ('lora_gateway_requests_total{adaptor="x"}', "lora_gateway_requests_total has no label"),
        ("sum by (adaptor) (lora_gateway_requests_total)", "grouping by 'adaptor'"),
        ("vllm:num_requests_runing", "unknown series vllm:num_requests_runing"),
        ("sum(rate(http_requests_total[5m]))", "names no lora_gateway_"),
    ],
)
def test_the_checker_catches_mistakes(
    expr: str, problem: str, exposed: dict[str, set[str]]
) -> None:
    assert any(problem in found for found in problems_in(expr, exposed))


def test_dashboard_covers_what_the_issue_asks() -> None:
    text = " ".join(dashboard_expressions())
    for needle in [
        "rate(lora_gateway_requests_total",  # per-adapter request rate
        "histogram_quantile(0.95, sum by (adapter, le) (rate(lora_gateway_request_duration",
        "lora_gateway_time_to_first_token_seconds_bucket",  # TTFT
        "rate(lora_gateway_completion_tokens_total",  # tokens/s
        "lora_gateway_adapters_loaded",
        "lora_gateway_adapter_evictions_total",
        "lora_gateway_engine_up",
    ]:
        assert needle in text, needle


def test_dashboard_is_well_formed() -> None:
    board = dashboard()
    assert board["uid"] == "lora-gateway"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    variables = {variable["name"] for variable in board["templating"]["list"]}
    assert variables == {"datasource", "adapter"}
    used = {m for s in strings_in(board["panels"]) for m in re.findall(r"\$(\w+)", s)}
    assert used <= variables | {"__rate_interval"}


def test_grafana_provisioning_points_at_the_dashboard() -> None:
    provider = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "lora-gateway.yml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    source = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    assert source["datasources"][0]["type"] == "prometheus"
    assert Path(DEPLOY / "grafana" / "dashboards" / "lora-gateway.json").is_file()
