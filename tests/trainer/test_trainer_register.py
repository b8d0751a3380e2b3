"""register_adapter (the trainer's policy over adapters.client): the request, how refusals read.

The happy path against the real gateway is in tests/integration/test_trained_adapter.py; here a
fake admin endpoint (httpx.MockTransport, for fault injection) answers with the error bodies a
gateway sends.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import httpx
import pytest

from adapters.client import ADMIN_TOKEN_ENV, ClientError
from adapters.errors import AdapterError, AdapterErrorKind
from trainer.register import register_adapter


def fake_admin(status: int, body: object, seen: list[httpx.Request]) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if isinstance(body, str):
            return httpx.Response(status, text=body)
        return httpx.Response(status, json=body)

    return httpx.MockTransport(answer)


def test_posts_name_and_absolute_path_with_the_admin_token(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []
    answer = register_adapter(
        "http://gateway.test:8000/v1/",
        "legal-lora",
        tmp_path / "adapter",
        token="s3cret",
        transport=fake_admin(201, {"name": "legal-lora", "state": "ready"}, seen),
    )
    assert answer == {"name": "legal-lora", "state": "ready"}
    (request,) = seen
    assert request.method == "POST"
    assert str(request.url) == "http://gateway.test:8000/admin/adapters"
    assert request.headers["authorization"] == "Bearer s3cret"
    assert json.loads(request.content) == {
        "name": "legal-lora",
        "path": str((tmp_path / "adapter").resolve()),
        "load": True,
        "new_version": True,
    }


def test_token_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[httpx.Request] = []
    monkeypatch.setenv(ADMIN_TOKEN_ENV, "from-env")
    register_adapter("http://g.test", "a", Path("a"), transport=fake_admin(200, {}, seen))
    assert seen[0].headers["authorization"] == "Bearer from-env"
    monkeypatch.delenv(ADMIN_TOKEN_ENV)
    with pytest.raises(AdapterError, match=f"no admin token.*{ADMIN_TOKEN_ENV}"):
        register_adapter("http://g.test", "a", Path("a"), transport=fake_admin(200, {}, seen))


def test_openai_shaped_refusal_is_shown_clearly() -> None:
    body = {
        "error": {
            "message": "adapter rank 64 exceeds the engine's max_lora_rank 16",
            "type": "invalid_request_error",
            "param": "path",
            "code": "adapter_invalid",
        }
    }
    with pytest.raises(ClientError) as caught:
        register_adapter(
            "http://g.test", "a", Path("a"), token="t", transport=fake_admin(400, body, [])
        )
    assert str(caught.value) == (
        "adapter rank 64 exceeds the engine's max_lora_rank 16 (HTTP 400, adapter_invalid)"
    )
    assert caught.value.message == "adapter rank 64 exceeds the engine's max_lora_rank 16"
    assert (caught.value.status, caught.value.kind) == (400, AdapterErrorKind.INVALID)
    assert (caught.value.code, caught.value.param) == ("adapter_invalid", "path")
    assert caught.value.error_type == "invalid_request_error"


def test_non_json_refusal_keeps_the_text() -> None:
    transport = fake_admin(502, "upstream exploded", [])
    with pytest.raises(
        ClientError,
        match=re.escape("at http://g.test/admin/adapters: upstream exploded (HTTP 502)"),
    ):
        register_adapter("http://g.test", "a", Path("a"), token="t", transport=transport)


def test_unreachable_gateway_and_bad_url() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(AdapterError, match="cannot reach the gateway") as caught:
        register_adapter(f"http://127.0.0.1:{port}", "a", Path("a"), token="t", timeout_s=5)
    assert caught.value.kind is AdapterErrorKind.UNAVAILABLE
    with pytest.raises(AdapterError, match="must start with http"):
        register_adapter("127.0.0.1:8000", "a", Path("a"), token="t")
