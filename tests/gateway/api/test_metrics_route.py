"""GET /metrics serves the app's own registry and runs the scrape hooks first."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from gateway.api.metrics import build_metrics_router
from gateway.observability.metrics import GatewayMetrics


async def test_metrics_route_serves_the_registry_after_the_hooks() -> None:
    metrics = GatewayMetrics(registered_adapters=lambda: {"legal"}, process_metrics=False)
    hook_calls = 0

    async def hook() -> None:
        nonlocal hook_calls
        hook_calls += 1
        # What a hook changes is visible in this very scrape.
        metrics.children_for(metrics.labels_for("legal")).requests("200").inc()

    metrics.add_scrape_hook(hook)
    app = FastAPI()
    app.include_router(build_metrics_router(metrics))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    assert hook_calls == 1
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    key = (
        "lora_gateway_requests_total",
        (("adapter", "legal"), ("model", "legal"), ("status_code", "200")),
    )
    assert samples[key] == 1
