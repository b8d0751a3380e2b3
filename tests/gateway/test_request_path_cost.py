"""What keeps the request path cheap, pinned so a refactor cannot quietly undo it: the serving
event loop, the order routes are tried in, the dependencies an inference route resolves.

Measured with ``python -m loadtest.cpu_profile`` (CPU per request over the fake upstream); each
of these was a visible share of that profile.
"""

from __future__ import annotations

from pathlib import Path

import uvloop
from fastapi.routing import APIRoute

from gateway.app import create_app
from gateway.commands.serve import serving_loop_factory
from gateway.settings import GatewaySettings

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
