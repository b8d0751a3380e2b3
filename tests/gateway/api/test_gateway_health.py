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
        assert f"static: {state.value}" in error["message"]
        assert int(response.headers["retry-after"]) > 0
    gateway.engine.state = EngineState.READY
    assert (await gateway.http.get("/readyz")).status_code == 200


async def test_readyz_hides_engine_details_from_anyone(gateway: Gateway) -> None:
    """Regression: /readyz is unauthenticated, so the engine's pid and log path (in its status
    reason) are for the admin API only."""
    secret_reason = "ready (pid 4242); log /srv/private/engine-0.log"
    gateway.engine.reason = secret_reason
    try:
        ready = await gateway.http.get("/readyz")
        assert ready.status_code == 200
        assert "4242" not in ready.text and "/srv/private" not in ready.text
        gateway.engine.state = EngineState.STARTING
        gateway.engine.reason = "starting (pid 4242, 3 s); log /srv/private/engine-0.log"
        starting = await gateway.http.get("/readyz")
        assert starting.status_code == 503 and "starting" in starting.json()["error"]["message"]
        assert "4242" not in starting.text and "/srv/private" not in starting.text
    finally:
        gateway.engine.state, gateway.engine.reason = EngineState.READY, "set by the test"
