"""The request middleware: x-request-id, body limits, the last-resort 500, one log line."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import httpx
import pytest
from pydantic import BaseModel

from gateway.app import create_app
from gateway.inference.routing import PublicModel, Route
from gateway.settings import GatewaySettings
from tests.gateway.conftest import Gateway, GatewayFactory
from tests.gateway.openai_env import BASE, access_lines, chat
from tests.support.gateway_server import StaticEngine, serve_in_loop, unused_url

GENERATED_ID = re.compile(r"[0-9a-f]{32}")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/healthz", None),
        ("GET", "/v1/models", None),
        ("POST", "/v1/chat/completions", chat()),
        ("POST", "/v1/chat/completions", chat(stream=True)),
        ("POST", "/v1/chat/completions", chat("unknown")),
        ("POST", "/v1/completions", {"model": BASE}),
        ("GET", "/no/such/path", None),
    ],
)
async def test_request_id_is_echoed_or_generated(
    gateway: Gateway, method: str, path: str, body: object
) -> None:
    mine = "client-req_42:abc.def"
    echoed = await gateway.http.request(method, path, json=body, headers={"x-request-id": mine})
    assert echoed.headers["x-request-id"] == mine
    generated = await gateway.http.request(method, path, json=body)
    assert GENERATED_ID.fullmatch(generated.headers["x-request-id"])
    other = await gateway.http.request(method, path, json=body)
    assert other.headers["x-request-id"] != generated.headers["x-request-id"]


@pytest.mark.parametrize("bad", ["x" * 129, "has space", "semi;colon", 'quote"d', "é"])
async def test_insane_request_ids_are_replaced(gateway: Gateway, bad: str) -> None:
    response = await gateway.http.get("/healthz", headers=[(b"x-request-id", bad.encode())])
    assert GENERATED_ID.fullmatch(response.headers["x-request-id"])


async def test_body_over_the_limit_is_413_declared_or_chunked(
    make_gateway: GatewayFactory,
) -> None:
    async with make_gateway(max_body_bytes=4096) as gw:
        big = chat(messages=[{"role": "user", "content": "x" * 5000}])
        declared = await gw.http.post(
            "/v1/chat/completions", json=big, headers={"x-request-id": "big-1"}
        )
        assert declared.status_code == 413
        assert declared.json()["error"]["code"] == "payload_too_large"
        assert declared.headers["x-request-id"] == "big-1"

        async def chunked() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b" " * 1000

        streamed = await gw.http.post("/v1/chat/completions", content=chunked())
        assert streamed.status_code == 413
        assert streamed.json()["error"]["code"] == "payload_too_large"

        fits = await gw.http.post("/v1/chat/completions", json=chat())
        assert fits.status_code == 200
        assert gw.fake.requests and len(gw.fake.requests) == 1


class ExplodingResolver:
    def lease(self, name: str, *, engine: str | None = None) -> AbstractAsyncContextManager[Route]:
        raise RuntimeError("a bug in a resolver")

    def public_models(self) -> list[PublicModel]:
        return []


async def test_unexpected_error_is_500_openai_shape_and_logged(
    gateway: Gateway, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway.lifecycle, "lease", ExplodingResolver().lease)
    with caplog.at_level(logging.ERROR):
        response = await gateway.http.post(
            "/v1/chat/completions", json=chat("style"), headers={"x-request-id": "boom-1"}
        )
    assert response.status_code == 500
    assert response.json() == {
        "error": {
            "message": "internal server error",
            "type": "internal_error",
            "param": None,
            "code": None,
        }
    }
    assert response.headers["x-request-id"] == "boom-1"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("boom-1" in r.getMessage() and r.exc_info for r in errors)


async def test_one_access_line_per_request_without_prompts(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    secret_prompt = "my-very-private-prompt-text"
    body = chat(messages=[{"role": "user", "content": secret_prompt}])
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        await gateway.http.post("/v1/chat/completions", json=body, headers={"x-request-id": "r1"})
        await gateway.http.post(
            "/v1/chat/completions", json=chat("nope"), headers={"x-request-id": "r2"}
        )
        first, second = await access_lines(caplog, "r1", "r2")
    assert first["status"] == 200 and first["model"] == BASE and first["adapter"] is None
    assert first["engine"] == "static" and first["method"] == "POST"
    assert first["path"] == "/v1/chat/completions" and first["latency_ms"] > 0
    assert second["status"] == 404 and second["error"] == "model_not_found"
    assert all(secret_prompt not in r.getMessage() for r in caplog.records)


class Echo(BaseModel):
    name: str
    size: int


async def test_fastapi_body_routes_get_400_and_413_in_the_openai_shape(tmp_path: Path) -> None:
    """Routes with pydantic body parameters (the admin API): FastAPI's 422 becomes 400, and
    the body limit still answers 413 although FastAPI wraps errors raised while reading."""
    app = create_app(
        GatewaySettings(data_dir=tmp_path, max_body_bytes=2048),
        engines=[StaticEngine(unused_url(), BASE)],
    )

    @app.post("/echo")
    async def echo(body: Echo) -> Echo:
        return body

    async def chunked() -> AsyncIterator[bytes]:
        yield b'{"name": "'
        for _ in range(5):
            yield b"x" * 1000
        yield b'", "size": 1}'

    async with serve_in_loop(app) as url, httpx.AsyncClient(base_url=url) as http:
        assert (await http.post("/echo", json={"name": "a", "size": 1})).json()["size"] == 1
        wrong = await http.post("/echo", json={"name": "a", "size": "big"})
        assert wrong.status_code == 400
        assert wrong.json()["error"]["param"] == "size"
        assert wrong.json()["error"]["type"] == "invalid_request_error"
        too_big = await http.post(
            "/echo", content=chunked(), headers={"content-type": "application/json"}
        )
        assert too_big.status_code == 413
        assert too_big.json()["error"]["code"] == "payload_too_large"
