"""``GET /metrics``: the app's own Prometheus registry, in the text exposition format.

``create_app`` includes :func:`build_metrics_router` with the app's
:class:`gateway.observability.metrics.GatewayMetrics`. Before rendering, the route awaits the
metrics' scrape hooks (the engines' per-adapter activity), so what Prometheus reads is as fresh as
its scrape; the text itself is rendered in a worker thread (:meth:`GatewayMetrics.scrape`), off the
loop. No auth, like vLLM's own ``/metrics``: keep the port private or put the scrape behind a proxy.
"""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.observability.metrics import GatewayMetrics


def build_metrics_router(metrics: GatewayMetrics) -> APIRouter:
    router = APIRouter()

    @router.get("/metrics", include_in_schema=False)
    async def scrape() -> Response:
        return Response(content=await metrics.scrape(), media_type=CONTENT_TYPE_LATEST)

    return router
