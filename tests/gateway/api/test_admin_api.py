"""The admin API over HTTP (in-process ASGI): auth, every route, errors in the OpenAI shape.

The app is the real ``create_app`` (which serves the admin API) with the lifecycle as its
adapter resolver; the engine is the FAKE vLLM of loadtest/fake_vllm.
"""

from __future__ import annotations

import logging
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.auth.admin_token import TOKEN_FILE, load_admin_token
from gateway.lifecycle.service import AdapterLifecycle
from gateway.settings import GatewaySettings
from loadtest.fake_vllm import FakeVLLM
from tests.adapters.builders import write_adapter, write_base_model
from tests.support.fake_engine import FakeEngine

BASE = "tinybase"
TOKEN = "test-admin-token-0123456789"


@dataclass
class Admin:
    http: httpx.AsyncClient
    roots: Path
    upstream: FakeVLLM
    lifecycle: AdapterLifecycle

    def adapter(self, name: str, seed: int = 0, **kwargs: Any) -> str:
        return str(
            write_adapter(
                self.roots / f"{name}-{seed}", base_model=BASE, seed=seed, **kwargs
            ).resolve()
        )


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[Admin]:
    from gateway.lifecycle.startup import build_lifecycle

    base_dir = write_base_model(tmp_path / "models" / BASE)
    roots = tmp_path / "data" / "adapters"
    settings = GatewaySettings(
        data_dir=tmp_path / "data",
        base_model=str(base_dir),
        admin_token=TOKEN,
        max_adapter_bytes=50_000,
    )  # type: ignore[arg-type]
    upstream = FakeVLLM()
    engine = FakeEngine(upstream, base_model=BASE)
    lifecycle = build_lifecycle(settings, [engine], capacity=2)
    await lifecycle.start()
    app = create_app(settings, engines=[engine], lifecycle=lifecycle)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://gw", headers={"Authorization": f"Bearer {TOKEN}"}
        ) as http:
            yield Admin(http=http, roots=roots, upstream=upstream, lifecycle=lifecycle)
    await lifecycle.close()


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]  # type: ignore[no-any-return]


async def test_auth_missing_and_wrong_token(admin: Admin) -> None:
    response = await admin.http.get("/admin/adapters", headers={"Authorization": ""})
    error = error_of(response, 401)
    assert error["code"] == "missing_admin_token" and "Bearer" in error["message"]
    response = await admin.http.get("/admin/adapters", headers={"Authorization": "Bearer nope"})
    assert error_of(response, 403)["code"] == "invalid_admin_token"
    response = await admin.http.post(
        "/admin/adapters", json={"name": "a", "path": "/x"}, headers={"Authorization": "Basic abc"}
    )
    error_of(response, 401)


async def test_register_list_get_load_unload_delete(admin: Admin) -> None:
    path = admin.adapter("a1")
    response = await admin.http.post("/admin/adapters", json={"name": "a1", "path": path})
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["object"] == "adapter" and created["state"] == "registered"
    assert created["active_version"] == 1 and created["upstream_name"].startswith("a1@v1.")
    assert created["versions"][0]["source_path"] == path
    again = await admin.http.post("/admin/adapters", json={"name": "a1", "path": path})
    assert again.status_code == 200

    listing = (await admin.http.get("/admin/adapters")).json()
    assert listing["object"] == "list" and [a["name"] for a in listing["data"]] == ["a1"]
    assert listing["data"][0]["versions"] is None
    models = (await admin.http.get("/v1/models")).json()
    assert [m["id"] for m in models["data"]] == [BASE, "a1"]

    loaded = (await admin.http.post("/admin/adapters/a1/load")).json()
    assert loaded["state"] == "loaded" and loaded["engines"] == ["fake"]
    assert set(admin.upstream.loaded) == {created["upstream_name"]}
    unloaded = (await admin.http.post("/admin/adapters/a1/unload")).json()
    assert unloaded["state"] == "registered" and admin.upstream.loaded == {}

    deleted = await admin.http.delete("/admin/adapters/a1")
    assert deleted.json() == {"object": "adapter.deleted", "name": "a1", "deleted": True}
    error = error_of(await admin.http.get("/admin/adapters/a1"), 404)
    assert error["code"] == "adapter_not_found"
    error_of(await admin.http.delete("/admin/adapters/a1"), 404)
    assert [m["id"] for m in (await admin.http.get("/v1/models")).json()["data"]] == [BASE]


async def test_versions_conflict_restore_and_pin(admin: Admin) -> None:
    v1, v2 = admin.adapter("a", seed=1), admin.adapter("a", seed=2)
    await admin.http.post("/admin/adapters", json={"name": "a", "path": v1, "load": True})
    error = error_of(await admin.http.post("/admin/adapters", json={"name": "a", "path": v2}), 409)
    assert error["code"] == "adapter_conflict" and "new_version" in error["message"]
    swapped = await admin.http.post(
        "/admin/adapters", json={"name": "a", "path": v2, "new_version": True}
    )
    assert swapped.status_code == 201 and swapped.json()["active_version"] == 2
    detail = (await admin.http.get("/admin/adapters/a")).json()
    assert [(v["version"], v["active"]) for v in detail["versions"]] == [(1, False), (2, True)]

    restored = await admin.http.post("/admin/adapters/a/restore", json={"version": 1})
    assert restored.json()["active_version"] == 1
    error_of(await admin.http.post("/admin/adapters/a/restore", json={"version": 5}), 404)
    error_of(await admin.http.post("/admin/adapters/a/restore", json={"version": 0}), 400)

    pinned = await admin.http.patch("/admin/adapters/a", json={"pinned": True})
    assert pinned.json()["pinned"] is True and pinned.json()["state"] == "loaded"
    error = error_of(await admin.http.post("/admin/adapters/a/unload"), 409)
    assert "PATCH" in error["message"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"name": "bad name", "path": "/x"}, 400, "invalid_name"),
        ({"name": BASE, "path": "/x"}, 400, "name_is_base_model"),
        ({"name": "a", "path": "relative/dir"}, 400, "path_not_absolute"),
        ({"name": "a", "path": "/etc"}, 403, "path_outside_roots"),
        ({"name": "a" * 65, "path": "/x"}, 400, None),
        ({"name": "a", "path": "/x", "surprise": 1}, 400, None),
        ({"name": "a"}, 400, None),
    ],
)
async def test_bad_registrations(
    admin: Admin, body: dict[str, Any], status: int, code: str | None
) -> None:
    error = error_of(await admin.http.post("/admin/adapters", json=body), status)
    if code is not None:
        assert error["code"] == code


async def test_file_level_validation_failures_over_http(admin: Admin) -> None:
    missing = error_of(
        await admin.http.post(
            "/admin/adapters", json={"name": "m", "path": str(admin.roots / "nope")}
        ),
        400,
    )
    assert missing["code"] == "missing_directory"
    big = admin.adapter("big", r=16, targets=("q_proj", "k_proj", "v_proj", "o_proj", "up_proj"))
    error = error_of(
        await admin.http.post("/admin/adapters", json={"name": "big", "path": big}), 413
    )
    assert (
        error["code"] == "adapter_too_large"
        and "LORA_GATEWAY_MAX_ADAPTER_BYTES" in error["message"]
    )
    deep = admin.adapter("deep", r=32)
    error = error_of(
        await admin.http.post("/admin/adapters", json={"name": "deep", "path": deep}), 400
    )
    assert error["code"] == "rank_exceeds_max"


def test_generated_admin_token_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = GatewaySettings(data_dir=tmp_path / "data", admin_token=None)
    with caplog.at_level(logging.INFO):
        first = load_admin_token(settings)
    path = tmp_path / "data" / TOKEN_FILE
    assert first.path == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secret = first.value.get_secret_value()
    assert len(secret) >= 32 and secret not in caplog.text and str(path) in caplog.text
    second = load_admin_token(settings)
    assert second.value.get_secret_value() == secret
    assert second.verify(secret) and not second.verify(secret + "x")
    path.chmod(0o644)
    load_admin_token(settings)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    from_env = load_admin_token(GatewaySettings(data_dir=tmp_path / "other", admin_token="abc"))  # type: ignore[arg-type]
    assert from_env.path is None and from_env.verify("abc")
    assert not (tmp_path / "other" / TOKEN_FILE).exists()


async def test_sampling_defaults_from_the_manifest_and_the_admin_api(admin: Admin) -> None:
    trained = {"adapter_name": "a", "sampling_defaults": {"temperature": 0, "stop": "###"}}
    path = admin.adapter("a", manifest=trained)
    created = await admin.http.post("/admin/adapters", json={"name": "a", "path": path})
    assert created.status_code == 201, created.text
    # Read from the manifest at registration, checked and normalised, kept with the version.
    expected = {"temperature": 0.0, "stop": ["###"]}
    assert created.json()["sampling_defaults"] == expected
    async with admin.lifecycle.lease("a") as route:
        assert route.sampling_defaults == expected

    patched = await admin.http.patch(
        "/admin/adapters/a", json={"sampling_defaults": {"temperature": 0.7, "max_tokens": 32}}
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["sampling_defaults"] == {"temperature": 0.7, "max_tokens": 32}
    assert patched.json()["pinned"] is False
    async with admin.lifecycle.lease("a") as route:
        assert route.sampling_defaults == {"temperature": 0.7, "max_tokens": 32}
    # Kept in the registry: a gateway that starts again serves the same defaults.
    record = admin.lifecycle.registry.get("a")
    assert record is not None
    assert record.active.sampling_defaults == {"temperature": 0.7, "max_tokens": 32}

    both = await admin.http.patch(
        "/admin/adapters/a", json={"sampling_defaults": None, "pinned": True}
    )
    assert both.json()["sampling_defaults"] is None and both.json()["pinned"] is True
    async with admin.lifecycle.lease("a") as route:
        assert route.sampling_defaults is None
    detail = (await admin.http.get("/admin/adapters/a")).json()
    assert detail["versions"][0]["sampling_defaults"] is None


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"pinned": None},
        {"sampling_defaults": {"temperature": 3}},
        {"sampling_defaults": {"temprature": 0.2}},
        {"sampling_defaults": {"stop": ["x"] * 5}},
        {"sampling_defaults": [0.2]},
        {"pinned": True, "surprise": 1},
    ],
)
async def test_bad_updates_change_nothing(admin: Admin, body: dict[str, Any]) -> None:
    path = admin.adapter("a", manifest={"sampling_defaults": {"top_p": 0.5}})
    await admin.http.post("/admin/adapters", json={"name": "a", "path": path})
    error_of(await admin.http.patch("/admin/adapters/a", json=body), 400)
    detail = (await admin.http.get("/admin/adapters/a")).json()
    assert detail["sampling_defaults"] == {"top_p": 0.5} and detail["pinned"] is False


async def test_a_manifest_with_bad_sampling_defaults_is_refused(admin: Admin) -> None:
    path = admin.adapter("a", manifest={"sampling_defaults": {"temperature": "hot"}})
    error = error_of(
        await admin.http.post("/admin/adapters", json={"name": "a", "path": path}), 400
    )
    assert error["code"] == "invalid_sampling_defaults"
    assert "sampling_defaults.temperature" in error["message"]
    assert (await admin.http.get("/admin/adapters")).json()["data"] == []


async def test_status_shows_engines_slots_adapters_and_in_flight(admin: Admin) -> None:
    path = admin.adapter("a1")
    response = await admin.http.post(
        "/admin/adapters", json={"name": "a1", "path": path, "load": True}
    )
    assert response.status_code == 201, response.text
    await admin.http.post("/admin/adapters", json={"name": "a2", "path": admin.adapter("a2", 2)})
    response = await admin.http.get("/admin/status")
    assert response.status_code == 200, response.text
    status = response.json()
    assert status["object"] == "gateway.status" and status["ready"] is True
    assert status["in_flight"] == 0
    (engine,) = status["engines"]
    assert engine["name"] == "fake" and engine["state"] == "ready" and engine["restarts"] == 0
    assert (engine["slots_used"], engine["slots_total"]) == (1, 2)
    assert engine["base_model"] == BASE and engine["url"].endswith("fake-engine.invalid")
    by_name = {a["name"]: a for a in status["adapters"]}
    assert by_name["a1"]["state"] == "loaded" and by_name["a1"]["engines"] == ["fake"]
    assert by_name["a2"]["state"] == "registered" and by_name["a2"]["version"] == 1


async def test_status_needs_the_admin_token(admin: Admin) -> None:
    response = await admin.http.get("/admin/status", headers={"Authorization": ""})
    assert error_of(response, 401)["code"] == "missing_admin_token"


async def test_client_facing_errors_hide_internal_names_paths_and_engine_messages(
    admin: Admin, caplog: pytest.LogCaptureFixture
) -> None:
    """OpenAI routes and the admin API answer with public names and a short reason; versioned
    upstream names, slot states, file paths and the engine's words go to the log (WARNING,
    with the request id)."""
    refused = admin.adapter("refused")
    await admin.http.post("/admin/adapters", json={"name": "refused", "path": refused})
    admin.upstream.refuse_names.add("refused")
    hidden = (refused, "@v", "/store/", "loading", "loaded", "unloading")

    def public(error: dict[str, Any]) -> str:
        message = str(error["message"])
        assert not [word for word in hidden if word in message], message
        return message

    caplog.set_level(logging.WARNING, logger="gateway.errors")
    body = {"model": "refused", "prompt": "hi", "max_tokens": 1}
    for _ in range(2):  # the engine's refusal, then the cool-down's answer
        response = await admin.http.post("/v1/completions", json=body)
        assert "'refused'" in public(error_of(response, 502))
        request_id = response.headers["x-request-id"]
        logged = [r.getMessage() for r in caplog.records if request_id in r.getMessage()]
        assert logged and "refused@v1." in logged[0]
    public(error_of(await admin.http.post("/admin/adapters/refused/load"), 502))

    # Every slot busy: the 503 names no other adapter's versioned name nor slot state.
    admin.lifecycle.slot_wait_s = 0.05
    for name in ("b", "c", "d"):
        await admin.http.post("/admin/adapters", json={"name": name, "path": admin.adapter(name)})
    async with admin.lifecycle.lease("b"), admin.lifecycle.lease("c"):
        response = await admin.http.post("/v1/completions", json={**body, "model": "d"})
        assert "'d'" in public(error_of(response, 503))
        assert any("b@v1." in r.getMessage() for r in caplog.records)
        public(error_of(await admin.http.post("/admin/adapters/d/load"), 503))
