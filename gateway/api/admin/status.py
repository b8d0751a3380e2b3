"""``GET /admin/status``: the gateway in one answer, for operators (``lora-gateway status``).

Engines (state, the full reason with pid and log path, restarts, adapter slots used of their
capacity), adapters (state, version, engines, requests in flight) and the gateway's requests in
flight, and with a shared placement board the gateway replicas (live or not, what they hold).
Behind the admin token like the rest of ``/admin``: the details that the open
``/readyz`` leaves out live here. :func:`build_status_router` is included by
:func:`gateway.app.create_app`; the response schema is
:class:`gateway.api.admin.protocol.GatewayStatusOut`.
"""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Depends, Request

from gateway.api.admin.adapters import require_admin
from gateway.api.admin.protocol import (
    AdapterStatusOut,
    EngineStatusOut,
    GatewayStatusOut,
    ReplicaStatusOut,
)
from gateway.api.deps import ServicesDep
from gateway.engines.base import EngineState
from gateway.lifecycle.service import AdapterLifecycle


def build_status_router() -> APIRouter:
    router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])

    @router.get("/status")
    async def gateway_status(request: Request, services: ServicesDep) -> GatewayStatusOut:
        lifecycle = getattr(request.app.state, "lifecycle", None)
        loaded = lifecycle.loaded_per_engine() if isinstance(lifecycle, AdapterLifecycle) else {}
        engines = []
        for engine in services.engines:
            status = engine.status()
            log_path = getattr(engine, "log_path", None)
            engines.append(
                EngineStatusOut(
                    name=status.name,
                    state=status.state.value,
                    reason=status.reason,
                    restarts=status.restarts,
                    url=status.url,
                    base_model=engine.base_model,
                    pid=getattr(engine, "pid", None),
                    log_path=str(log_path) if log_path is not None else None,
                    slots_used=loaded.get(engine.name, 0),
                    slots_total=engine.lora_capacity,
                )
            )
        adapters = (
            [
                AdapterStatusOut(
                    name=view.record.name,
                    version=view.record.active_version,
                    state=view.active.state,
                    pinned=view.record.pinned,
                    engines=list(view.active.engines),
                    in_flight=sum(v.leases for v in view.versions),
                    last_error=view.active.last_error,
                )
                for view in lifecycle.views()
            ]
            if isinstance(lifecycle, AdapterLifecycle)
            else []
        )
        replicas = (
            [ReplicaStatusOut(**asdict(r)) for r in await lifecycle.replica_views()]
            if isinstance(lifecycle, AdapterLifecycle) and lifecycle.replicas is not None
            else None
        )
        return GatewayStatusOut(
            ready=any(e.state == EngineState.READY.value for e in engines),
            in_flight=services.metrics.in_flight_requests(),
            engines=engines,
            adapters=adapters,
            replicas=replicas,
        )

    return router
