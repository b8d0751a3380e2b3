"""What keeps the request path cheap, pinned so a refactor cannot quietly undo it: the serving
event loop, the order routes are tried in, the dependencies an inference route resolves.

Measured with ``python -m loadtest.cpu_profile`` (CPU per request over the fake upstream); each
of these was a visible share of that profile.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fastapi.routing
import httpx
import pytest
import uvloop
from fastapi.routing import APIRoute

from gateway.api.deps import get_principal
from gateway.app import create_app
from gateway.commands.serve import serving_loop_factory
from gateway.errors import AuthenticationError
from gateway.settings import GatewaySettings
from tests.gateway.conftest import Gateway
from tests.gateway.openai_env import BASE

INFERENCE_PATHS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/responses",
    "/v1/messages",
    "/tokenize",
    "/detokenize",
    "/v1/messages/count_tokens",
)


def _routes(tmp_path: Path) -> list[APIRoute]:
    app = create_app(GatewaySettings(data_dir=tmp_path, engine_urls=["http://127.0.0.1:9"]))
    return [route for route in app.router.routes if isinstance(route, APIRoute)]


def test_serve_runs_on_uvloop() -> None:
    factory = serving_loop_factory()
    assert factory is not None
    loop = factory()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


def test_inference_routes_are_tried_before_every_other_route(tmp_path: Path) -> None:
    paths = [route.path for route in _routes(tmp_path)]
    assert paths[:2] == ["/v1/chat/completions", "/v1/completions"]
    last_inference = max(paths.index(path) for path in INFERENCE_PATHS)
    assert all(paths.index(path) > last_inference for path in paths if path.startswith("/admin"))


def test_inference_routes_resolve_the_caller_in_one_dependency(tmp_path: Path) -> None:
    by_path = {(route.path, *sorted(route.methods)): route for route in _routes(tmp_path)}
    for path in INFERENCE_PATHS:
        dependant = by_path[(path, "POST")].dependant
        # The /v1 router's authentication, and the caller (which reuses it, cached).
        names = [dep.call.__name__ for dep in dependant.dependencies if dep.call is not None]
        assert names == ["get_principal", "get_caller"], path
        assert not dependant.query_params and not dependant.body_params, path


async def test_inference_routes_skip_fastapis_dependency_solving(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    solved: list[str] = []
    original = fastapi.routing.solve_dependencies

    async def counting(**kwargs: Any) -> Any:
        solved.append(kwargs["dependant"].path)
        return await original(**kwargs)

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", counting)
    chat = {"model": BASE, "messages": [{"role": "user", "content": "hi"}]}
    response = await gateway.http.post("/v1/chat/completions", json=chat)
    assert response.status_code == 200, response.text
    assert solved == []
    assert (await gateway.http.get("/v1/models")).status_code == 200
    assert solved == ["/v1/models"]  # every other route: FastAPI's own handler


async def test_dependency_overrides_still_apply_to_inference_routes(tmp_path: Path) -> None:
    app = create_app(GatewaySettings(data_dir=tmp_path, engine_urls=["http://127.0.0.1:9"]))

    async def refuse() -> None:
        raise AuthenticationError("overridden")

    app.dependency_overrides[get_principal] = refuse
    transport = httpx.ASGITransport(app=app)  # no lifespan: only the override can answer
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        response = await http.post("/v1/chat/completions", json={"model": BASE})
    assert response.status_code == 401, response.text
    assert response.json()["error"]["message"] == "overridden"
