"""Liveness and readiness: ``GET /healthz`` and ``GET /readyz``, never behind auth.

``/healthz`` answers 200 while the process serves HTTP at all. ``/readyz`` answers 200 when at
least one engine is READY and 503 (OpenAI error shape, Retry-After, each engine's state in the
message) otherwise, so a load balancer stops sending traffic while engines (re)start. Both are
open to anyone, so they show each engine's name and state only: the reasons (pids, log paths,
engine messages) are for the admin API (``GET /admin/status``).
:func:`build_health_router` is included by :func:`gateway.app.create_app`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gateway.api.deps import ServicesDep
from gateway.engines.base import EngineState
from gateway.errors import EngineUnavailableError


def build_health_router() -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz(services: ServicesDep) -> dict[str, Any]:
        statuses = [engine.status() for engine in services.engines]
        if not any(status.state is EngineState.READY for status in statuses):
            states = "; ".join(f"{s.name}: {s.state.value}" for s in statuses)
            raise EngineUnavailableError(f"no engine is ready: {states}", code="not_ready")
        return {
            "status": "ready",
            "engines": [
                {"name": s.name, "state": s.state.value, "restarts": s.restarts} for s in statuses
            ],
        }

    return router
