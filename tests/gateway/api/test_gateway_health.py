"""/healthz and /readyz: liveness always, readiness only with a READY engine."""

from __future__ import annotations

from gateway.engines.base import EngineState
from tests.gateway.conftest import Gateway


async def test_healthz_is_200_whatever_the_engines(gateway: Gateway) -> None:
    for state in (EngineState.READY, EngineState.DOWN, EngineState.STARTING):
        gateway.engine.state = state
        response = await gateway.http.get("/healthz")
        assert response.status_code == 200 and response.json() == {"status": "ok"}


async def test_readyz_follows_the_engine_state(gateway: Gateway) -> None:
    ready = await gateway.http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["engines"][0]["state"] == "ready"
    for state in (EngineState.STARTING, EngineState.DOWN, EngineState.STOPPED):
        gateway.engine.state = state
        response = await gateway.http.get("/readyz")
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["code"] == "not_ready" and state.value in error["message"]
        assert f"static: {state.value} (set by the test)" in error["message"]  # the reason
        assert int(response.headers["retry-after"]) > 0
    gateway.engine.state = EngineState.READY
    assert (await gateway.http.get("/readyz")).status_code == 200
