"""adapters.client.AdminClient: one method per admin route, errors as AdapterError kinds.

The admin API itself answers through a fake transport here (httpx.MockTransport, to check the
requests and to inject error bodies); the client against the real gateway over HTTP is
exercised by tests/gateway/api/test_admin_cli.py and the integration tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from adapters.client import AdminClient, ClientError
from adapters.errors import AdapterError, AdapterErrorKind


def client(seen: list[httpx.Request], status: int = 200, body: object = None) -> AdminClient:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if status == 204:
            return httpx.Response(204)
        return httpx.Response(status, json=body if body is not None else {"data": []})

    return AdminClient("http://g.test/v1/", "tok", transport=httpx.MockTransport(answer))


def test_each_route(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []
    with client(seen) as admin:
        admin.register("a", tmp_path / "a", pinned=False, load=True)
        assert admin.list() == []
        admin.get("a")
        admin.load("a")
        admin.unload("a")
        admin.restore("a", 2)
        admin.set_pinned("a", True)
    with client(seen, status=204) as admin:
        admin.delete("a b/..")
    assert [(r.method, r.url.raw_path.decode()) for r in seen] == [
        ("POST", "/admin/adapters"),
        ("GET", "/admin/adapters"),
        ("GET", "/admin/adapters/a"),
        ("POST", "/admin/adapters/a/load"),
        ("POST", "/admin/adapters/a/unload"),
        ("POST", "/admin/adapters/a/restore"),
        ("PATCH", "/admin/adapters/a"),
        ("DELETE", "/admin/adapters/a%20b%2F.."),
    ]
    assert all(r.headers["authorization"] == "Bearer tok" for r in seen)
    assert json.loads(seen[0].content) == {
        "name": "a",
        "path": str((tmp_path / "a").resolve()),
        "load": True,
        "new_version": False,
        "pinned": False,
    }
    assert json.loads(seen[5].content) == {"version": 2}
    assert json.loads(seen[6].content) == {"pinned": True}


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, AdapterErrorKind.INVALID),
        (403, AdapterErrorKind.FORBIDDEN),
        (404, AdapterErrorKind.NOT_FOUND),
        (409, AdapterErrorKind.CONFLICT),
        (413, AdapterErrorKind.TOO_LARGE),
        (500, AdapterErrorKind.INTERNAL),
        (503, AdapterErrorKind.UNAVAILABLE),
    ],
)
def test_the_servers_error_is_kept(status: int, kind: AdapterErrorKind) -> None:
    body = {"error": {"message": "why", "type": "t", "param": "name", "code": "c"}}
    with client([], status, body) as admin, pytest.raises(ClientError) as caught:
        admin.get("a")
    error = caught.value
    assert (error.kind, error.status, error.message, error.code, error.param) == (
        kind,
        status,
        "why",
        "c",
        "name",
    )
    assert str(error) == f"why (HTTP {status}, c)" and error.error_type == "t"


def test_an_answer_that_is_not_an_object_is_an_error() -> None:
    with client([], 200, [1, 2]) as admin, pytest.raises(AdapterError) as caught:
        admin.get("a")
    assert caught.value.code == "unexpected_answer"


def test_register_source_sends_the_url_and_waits() -> None:
    seen: list[httpx.Request] = []
    with client(seen, status=201, body={"object": "adapter"}) as admin:
        admin.register_source("a", "s3://b/p", load=True)
        admin.register_source("a", "hf://o/n@v1", wait=False, pinned=True)
    assert [r.url.raw_path.decode() for r in seen] == [
        "/admin/adapters?wait=true",
        "/admin/adapters",
    ]
    assert json.loads(seen[0].content) == {
        "name": "a",
        "source": "s3://b/p",
        "load": True,
        "new_version": False,
    }
    assert json.loads(seen[1].content)["pinned"] is True
