"""Virtual keys end to end: ``/admin/keys`` and enforcement on ``/v1``, through the official
``openai`` SDK, against the real app over the fake upstream (tests/gateway/conftest.py).

Each test makes its own keys (names are unique per module); the gateway also has one static
``--api-key``, which must keep working, unrestricted, beside the virtual keys.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio
from pydantic import SecretStr

from loadtest.fake_vllm import DONE, Recorded, Stream, chunk_event, usage_event
from tests.adapters.builders import write_adapter
from tests.gateway.conftest import Gateway, GatewayFactory
from tests.gateway.openai_env import ADAPTER, BASE

ADMIN = "test-admin-token-keys-0123456789"
STATIC_KEY = "sk-static-key-0123456789"
LEGAL = ("legal-v1", "legal-v2")
MESSAGES: Any = [{"role": "user", "content": "hi"}]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gw(make_gateway: GatewayFactory) -> AsyncIterator[Gateway]:
    async with make_gateway(admin_token=SecretStr(ADMIN), api_keys=[SecretStr(STATIC_KEY)]) as g:
        for seed, name in enumerate(LEGAL, start=2):
            path = write_adapter(
                g.settings.data_dir / "adapters" / name, base_model=BASE, seed=seed
            )
            await g.lifecycle.register(name, path, load=True)
        yield g


@pytest.fixture
def fresh(gw: Gateway) -> Gateway:
    gw.fake.reset()
    return gw


def completions(gw: Gateway) -> list[Recorded]:
    """The completion requests the engine received (not the adapter loads)."""
    return [r for r in gw.fake.requests if r.path.endswith("completions")]


def admin_headers() -> dict[str, str]:
    return {"authorization": f"Bearer {ADMIN}"}


async def admin(gw: Gateway, method: str, path: str, body: Any = None) -> httpx.Response:
    return await gw.http.request(method, f"/admin{path}", json=body, headers=admin_headers())


async def create_key(gw: Gateway, name: str, **fields: Any) -> dict[str, Any]:
    response = await admin(gw, "POST", "/keys", {"name": name, **fields})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def sdk(gw: Gateway, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0)


# --- the admin API ---------------------------------------------------------------------------
async def test_create_shows_the_secret_once_and_stores_only_its_hash(fresh: Gateway) -> None:
    created = await create_key(fresh, "team-a", limits={"rpm": 5})
    secret = created["secret"]
    assert secret.startswith("lgw-") and len(secret) > 40
    assert created["prefix"] == secret[:12] and created["status"] == "active"
    assert created["models"] == ["*"] and created["limits"]["rpm"] == 5

    shown = await admin(fresh, "GET", f"/keys/{created['id']}")
    listed = await admin(fresh, "GET", "/keys")
    by_name = await admin(fresh, "GET", "/keys/team-a")
    for response in (shown, listed, by_name):
        assert response.status_code == 200 and secret not in response.text
        assert secret[12:] not in response.text
    assert by_name.json()["id"] == created["id"]
    database = (fresh.settings.data_dir / "registry.db").read_bytes()
    assert secret.encode() not in database and secret[12:].encode() not in database


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"name": "x", "colour": "red"}, 400, "colour"),
        ({"name": "x", "limits": {"rpm": -1}}, 400, "limits.rpm"),
        ({"name": "x", "limits": {"tpm": 0}}, 400, "limits.tpm"),
        ({"name": "x", "limits": {"burst": 3}}, 400, "limits.burst"),
        ({"name": "x", "models": ["legl-*"]}, 400, "'legl-*' match no model"),
        ({"name": "x", "models": []}, 400, "models"),
        ({"name": "bad name!"}, 400, "name"),
        ({"name": "x", "expires_at": "2001-01-01T00:00:00Z"}, 400, "in the past"),
        ({"name": "x", "expires_at": "2099-01-01T00:00:00"}, 400, "expires_at"),
    ],
)
async def test_bad_bodies_get_a_4xx_that_says_what_to_fix(
    fresh: Gateway, body: dict[str, Any], status: int, fragment: str
) -> None:
    response = await admin(fresh, "POST", "/keys", body)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]["message"]


async def test_admin_key_routes_need_the_admin_token_and_name_unknown_keys(fresh: Gateway) -> None:
    response = await fresh.http.get("/admin/keys")
    assert response.status_code == 401
    response = await fresh.http.get(
        "/admin/keys", headers={"authorization": f"Bearer {STATIC_KEY}"}
    )
    assert response.status_code == 403
    missing = await admin(fresh, "GET", "/keys/nobody")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "key_not_found"
    await create_key(fresh, "twice")
    again = await admin(fresh, "POST", "/keys", {"name": "twice"})
    assert again.status_code == 409 and "name" in again.json()["error"]["message"]


async def test_update_changes_only_what_was_sent(fresh: Gateway) -> None:
    created = await create_key(fresh, "upd", limits={"rpm": 5, "tpm": 100})
    response = await admin(fresh, "PATCH", "/keys/upd", {"limits": {"tpm": None, "rpm": 7}})
    assert response.status_code == 200
    assert response.json()["limits"] == {
        "rpm": 7,
        "tpm": None,
        "max_concurrent": None,
        "daily_tokens": None,
        "monthly_tokens": None,
    }
    bad = await admin(fresh, "PATCH", "/keys/upd", {"models": ["nothing-like-it"]})
    assert bad.status_code == 400 and "nothing-like-it" in bad.json()["error"]["message"]
    assert (await admin(fresh, "GET", "/keys/upd")).json()["models"] == ["*"]
    assert (await admin(fresh, "PATCH", "/keys/upd", {"secret": "x"})).status_code == 400
    # The secret still works after an update.
    client = sdk(fresh, created["secret"])
    await client.chat.completions.create(model=BASE, messages=MESSAGES)
    await client.close()


# --- enforcement -----------------------------------------------------------------------------
async def test_scoped_key_gets_404_like_an_unknown_model_and_sees_only_its_models(
    fresh: Gateway,
) -> None:
    created = await create_key(fresh, "legal-team", models=["legal-*"])
    client = sdk(fresh, created["secret"])
    models = await client.models.list()
    assert sorted(model.id for model in models.data) == sorted(LEGAL)
    answer = await client.chat.completions.create(model="legal-v2", messages=MESSAGES)
    assert answer.model == "legal-v2"

    errors = {}
    for model in (ADAPTER, BASE, "no-such-model"):
        with pytest.raises(openai.NotFoundError) as caught:
            await client.chat.completions.create(model=model, messages=MESSAGES)
        errors[model] = caught.value.body
    await client.close()
    for model, body in errors.items():
        assert isinstance(body, dict)
        assert body["code"] == "model_not_found"
        assert body["message"] == f"The model `{model}` does not exist."
    # Only the allowed call reached the engine; the static key still reaches everything.
    assert [r.json()["model"].split("@")[0] for r in completions(fresh)] == ["legal-v2"]
    static = sdk(fresh, STATIC_KEY)
    assert {m.id for m in (await static.models.list()).data} >= {BASE, ADAPTER, *LEGAL}
    await static.close()


async def test_30_rpm_key_sending_100_requests_gets_30_answers_and_70_429s(
    fresh: Gateway,
) -> None:
    created = await create_key(fresh, "rpm-30", limits={"rpm": 30})
    client = sdk(fresh, created["secret"])

    async def one() -> httpx.Response:
        try:
            raw = await client.chat.completions.with_raw_response.create(
                model=BASE, messages=MESSAGES
            )
            return raw.http_response
        except openai.RateLimitError as exc:
            return exc.response

    responses = await asyncio.gather(*(one() for _ in range(100)))
    await client.close()
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert (len(ok), len(refused)) == (30, 70)
    assert len(completions(fresh)) == 30  # a refused request reaches no engine
    assert sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in ok) == list(range(30))
    for response in responses:
        assert response.headers["x-ratelimit-limit-requests"] == "30"
        assert response.headers["x-ratelimit-reset-requests"].endswith("s")
    for response in refused:
        assert 1 <= int(response.headers["retry-after"]) <= 60
        assert response.headers["x-ratelimit-remaining-requests"] == "0"
        error = response.json()["error"]
        assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests"


async def test_tpm_stops_a_key_after_the_streamed_tokens_it_used(fresh: Gateway) -> None:
    created = await create_key(fresh, "tpm-20", limits={"tpm": 20})
    client = sdk(fresh, created["secret"])
    remaining: list[int] = []
    while True:
        try:
            raw = await client.chat.completions.with_raw_response.create(
                model=BASE, messages=MESSAGES, stream=True
            )
        except openai.RateLimitError as exc:
            refused = exc
            break
        remaining.append(int(raw.headers["x-ratelimit-remaining-tokens"]))
        chunks = [chunk async for chunk in raw.parse()]
        assert all(chunk.usage is None for chunk in chunks)  # the client did not ask for it
        assert len(remaining) < 30, "the tpm limit never stopped the key"
    await client.close()
    # Every stream cost what the engine counted (the same here): 20, 20-d, 20-2d, ... > 0.
    step = remaining[0] - remaining[1]
    assert step > 0 and remaining == list(range(20, 0, -step))
    body = refused.body
    assert isinstance(body, dict)
    assert body["type"] == "tokens" and body["code"] == "rate_limit_exceeded"
    assert refused.response.headers["x-ratelimit-remaining-tokens"] == "0"
    assert int(refused.response.headers["retry-after"]) >= 1
    assert len(completions(fresh)) == len(remaining)


async def test_a_spent_daily_budget_is_insufficient_quota(fresh: Gateway) -> None:
    created = await create_key(fresh, "budget", limits={"daily_tokens": 10})
    client = sdk(fresh, created["secret"])
    first = await client.completions.create(model=BASE, prompt="hi")
    assert first.usage is not None
    per_request, answered = first.usage.total_tokens, 1
    with pytest.raises(openai.RateLimitError) as caught:
        while answered < 20:  # admitted while the day's total is under 10
            await client.completions.create(model=BASE, prompt="hi")
            answered += 1
    await client.close()
    assert answered == -(-10 // per_request)
    body = caught.value.body
    assert isinstance(body, dict) and body["code"] == "insufficient_quota"
    midnight = (datetime.now(UTC) + timedelta(days=1)).replace(hour=0, minute=0, second=0)
    wait = (midnight - datetime.now(UTC)).total_seconds()
    assert abs(int(caught.value.response.headers["retry-after"]) - wait) < 5


async def test_max_concurrent_refuses_while_the_slot_is_taken(fresh: Gateway) -> None:
    created = await create_key(fresh, "one-at-a-time", limits={"max_concurrent": 1})
    release = asyncio.Event()

    async def held(recorded: Recorded) -> Stream | None:
        if not recorded.path.endswith("completions"):
            return None
        return Stream([chunk_event(BASE, "x"), release, usage_event(BASE, 1, 1), DONE])

    fresh.fake.handler = held
    client = sdk(fresh, created["secret"])
    stream = await client.chat.completions.create(model=BASE, messages=MESSAGES, stream=True)
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model=BASE, messages=MESSAGES)
    assert caught.value.response.headers["retry-after"] == "1"
    release.set()
    _ = [chunk async for chunk in stream]
    fresh.fake.handler = None
    for _ in range(50):  # the slot is freed once the response has been sent in full
        try:
            await client.chat.completions.create(model=BASE, messages=MESSAGES)
            break
        except openai.RateLimitError:
            await asyncio.sleep(0.02)
    else:
        raise AssertionError("the concurrency slot was never freed")
    await client.close()


async def test_revoked_key_is_refused_within_2_seconds(fresh: Gateway) -> None:
    created = await create_key(fresh, "to-revoke")
    client = sdk(fresh, created["secret"])
    await client.models.list()  # cached as valid now
    revoked = await admin(fresh, "POST", "/keys/to-revoke/revoke")
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    started = time.monotonic()
    with pytest.raises(openai.AuthenticationError) as caught:
        while time.monotonic() - started < 2.0:
            await client.models.list()
            await asyncio.sleep(0.05)
    await client.close()
    body = caught.value.body
    assert isinstance(body, dict) and body["code"] == "revoked_api_key"
    assert created["secret"] not in str(body)
    rotate = await admin(fresh, "POST", "/keys/to-revoke/rotate")
    assert rotate.status_code == 409


async def test_rotate_gives_a_new_secret_and_the_old_one_stops(fresh: Gateway) -> None:
    created = await create_key(fresh, "rotating")
    rotated = await admin(fresh, "POST", "/keys/rotating/rotate")
    assert rotated.status_code == 200
    new = rotated.json()
    assert new["id"] == created["id"] and new["secret"] != created["secret"]
    new_client, old_client = sdk(fresh, new["secret"]), sdk(fresh, created["secret"])
    await new_client.models.list()
    with pytest.raises(openai.AuthenticationError):
        await old_client.models.list()
    await new_client.close()
    await old_client.close()


async def test_expired_and_unknown_keys_get_401(fresh: Gateway) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=1)
    created = await create_key(fresh, "short-lived", expires_at=soon.isoformat())
    client = sdk(fresh, created["secret"])
    await client.models.list()
    await asyncio.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.05)
    with pytest.raises(openai.AuthenticationError) as caught:
        await client.models.list()
    await client.close()
    body = caught.value.body
    assert isinstance(body, dict) and body["code"] == "expired_api_key"
    shown = (await admin(fresh, "GET", "/keys/short-lived")).json()
    assert shown["status"] == "expired"
    for key in ("lgw-" + "x" * 43, "sk-not-a-key", "lgw-"):
        response = await fresh.http.get("/v1/models", headers={"authorization": f"Bearer {key}"})
        assert response.status_code == 401
    assert (await fresh.http.get("/v1/models")).json()["error"]["code"] == "missing_api_key"


# --- per-adapter limits ----------------------------------------------------------------------
async def test_an_adapters_own_limits_hold_for_every_caller(fresh: Gateway) -> None:
    set_limits = await admin(fresh, "PUT", "/adapters/legal-v1/limits", {"rpm": 3})
    assert set_limits.status_code == 200 and set_limits.json()["rpm"] == 3
    assert (await admin(fresh, "GET", "/adapters/legal-v1/limits")).json()["rpm"] == 3
    created = await create_key(fresh, "adapter-limited", limits={"rpm": 100})
    keyed, static = sdk(fresh, created["secret"]), sdk(fresh, STATIC_KEY)
    try:
        await static.completions.create(model="legal-v1", prompt="hi")
        await static.completions.create(model="legal-v1", prompt="hi")
        first = await keyed.completions.with_raw_response.create(model="legal-v1", prompt="hi")
        assert first.headers["x-ratelimit-remaining-requests"] == "99"
        with pytest.raises(openai.RateLimitError) as caught:
            await keyed.completions.create(model="legal-v1", prompt="hi")
        assert "adapter legal-v1" in caught.value.message
        assert int(caught.value.response.headers["retry-after"]) >= 1
        with pytest.raises(openai.RateLimitError):
            await static.completions.create(model="legal-v1", prompt="hi")
        # The refused request cost the key nothing; other models are not held by it.
        other = await keyed.completions.with_raw_response.create(model=BASE, prompt="hi")
        assert other.headers["x-ratelimit-remaining-requests"] == "98"
        assert len(completions(fresh)) == 4
    finally:
        await keyed.close()
        await static.close()
        cleared = await admin(fresh, "PUT", "/adapters/legal-v1/limits", {})
        assert cleared.json() == {
            "model": "legal-v1",
            "rpm": None,
            "tpm": None,
            "max_concurrent": None,
        }


@pytest.mark.parametrize(
    ("path", "body", "status", "fragment"),
    [
        ("/adapters/nope/limits", {"rpm": 1}, 404, "nope"),
        ("/adapters/legal-v1/limits", {"rpm": -5}, 400, "rpm"),
        ("/adapters/legal-v1/limits", {"daily_tokens": 5}, 400, "daily_tokens"),
    ],
)
async def test_bad_adapter_limits_get_a_4xx(
    fresh: Gateway, path: str, body: dict[str, Any], status: int, fragment: str
) -> None:
    response = await admin(fresh, "PUT", path, body)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]["message"]


async def test_limit_headers_on_every_answer_of_a_limited_key_errors_included(
    fresh: Gateway,
) -> None:
    """400 for a bad body, 404 for a model out of scope or unknown, /v1/models: each answer
    carries the key's x-ratelimit-* headers; those that reached no engine cost nothing."""
    created = await create_key(
        fresh, "headers-everywhere", models=["legal-*"], limits={"rpm": 10, "tpm": 1000}
    )
    auth = {"authorization": f"Bearer {created['secret']}"}
    chat = "/v1/chat/completions"
    answers = {
        "bad body": await fresh.http.post(chat, json={"model": LEGAL[0]}, headers=auth),
        "not json": await fresh.http.post(chat, content=b"{", headers=auth),
        "out of scope": await fresh.http.post(
            chat, json={"model": ADAPTER, "messages": MESSAGES}, headers=auth
        ),
        "models": await fresh.http.get("/v1/models", headers=auth),
        "one model": await fresh.http.get(f"/v1/models/{LEGAL[0]}", headers=auth),
        "no such model": await fresh.http.get(f"/v1/models/{ADAPTER}", headers=auth),
    }
    statuses = {what: response.status_code for what, response in answers.items()}
    assert statuses == {
        "bad body": 400,
        "not json": 400,
        "out of scope": 404,
        "models": 200,
        "one model": 200,
        "no such model": 404,
    }
    for what, response in answers.items():
        assert response.headers.get("x-ratelimit-limit-requests") == "10", what
        assert response.headers.get("x-ratelimit-limit-tokens") == "1000", what
        # none of these reached an engine or took a request from the minute's window
        assert response.headers.get("x-ratelimit-remaining-requests") == "10", what
        assert response.headers.get("x-ratelimit-remaining-tokens") == "1000", what
        assert response.headers["x-ratelimit-reset-requests"].endswith("s"), what
    unknown = await fresh.http.post(
        chat, json={"model": "legal-none", "messages": MESSAGES}, headers=auth
    )
    assert unknown.status_code == 404 and unknown.headers["x-ratelimit-limit-requests"] == "10"
    answered = await fresh.http.post(
        chat, json={"model": LEGAL[0], "messages": MESSAGES}, headers=auth
    )
    assert answered.status_code == 200
    spent = int(answered.headers["x-ratelimit-remaining-requests"])
    after = await fresh.http.post(chat, json={"model": LEGAL[0]}, headers=auth)
    assert after.status_code == 400
    assert int(after.headers["x-ratelimit-remaining-requests"]) == spent
    tokens = answered.json()["usage"]["total_tokens"]
    assert int(after.headers["x-ratelimit-remaining-tokens"]) == 1000 - tokens
    # an unlimited key gets none
    plain = await create_key(fresh, "headers-none")
    bare = await fresh.http.post(
        chat, json={"model": BASE}, headers={"authorization": f"Bearer {plain['secret']}"}
    )
    assert bare.status_code == 400 and "x-ratelimit-limit-requests" not in bare.headers


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"colour": "red"}, 400, "colour"),
        ({"limits": {"rpm": -1}}, 400, "limits.rpm"),
        ({"limits": {"max_concurrent": 0}}, 400, "limits.max_concurrent"),
        ({"limits": {"tpm": 10**16}}, 400, "limits.tpm"),
        ({"limits": {"rpm": "lots"}}, 400, "limits.rpm"),
        ({"limits": {"burst": 3}}, 400, "limits.burst"),
        ({"models": ["legl-*"]}, 400, "'legl-*' match no model"),
        ({"models": []}, 400, "models"),
        ({"name": "bad name!"}, 400, "name"),
        ({"name": "x" * 65}, 400, "name"),
        ({"expires_at": "2001-01-01T00:00:00Z"}, 400, "in the past"),
        ({"expires_at": "2099-01-01T00:00:00"}, 400, "expires_at"),
        ([1, 2], 400, ""),
    ],
)
async def test_bad_updates_get_a_4xx_that_says_what_to_fix_and_change_nothing(
    fresh: Gateway, body: Any, status: int, fragment: str
) -> None:
    name = f"patch-{uuid.uuid4().hex[:8]}"
    await create_key(fresh, name, limits={"rpm": 5})
    response = await admin(fresh, "PATCH", f"/keys/{name}", body)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]["message"]
    unchanged = (await admin(fresh, "GET", f"/keys/{name}")).json()
    assert unchanged["limits"]["rpm"] == 5 and unchanged["models"] == ["*"]
    assert unchanged["expires_at"] is None and unchanged["name"] == name


async def test_key_routes_refuse_what_is_not_a_key_body(fresh: Gateway) -> None:
    headers = {**admin_headers(), "content-type": "application/json"}
    for method, path in (("POST", "/admin/keys"), ("PATCH", "/admin/keys/nobody")):
        for raw in (b"{", b"", b'"team"'):
            response = await fresh.http.request(method, path, content=raw, headers=headers)
            assert response.status_code in (400, 404), (method, raw, response.text)
            assert response.json()["error"]["message"]
    for action in ("revoke", "rotate"):
        missing = await admin(fresh, "POST", f"/keys/nobody/{action}")
        assert missing.status_code == 404 and "nobody" in missing.json()["error"]["message"]
    missing = await admin(fresh, "PATCH", "/keys/nobody", {"limits": {"rpm": 1}})
    assert missing.status_code == 404 and "nobody" in missing.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"rpm": 0}, "rpm"),
        ({"tpm": -1}, "tpm"),
        ({"max_concurrent": "two"}, "max_concurrent"),
        ({"rpm": 10**12}, "rpm"),
        ({"rpm": 1, "colour": "red"}, "colour"),
        ([1], ""),
    ],
)
async def test_more_bad_adapter_limits_get_a_400_that_names_the_field(
    fresh: Gateway, body: Any, fragment: str
) -> None:
    response = await admin(fresh, "PUT", "/adapters/legal-v2/limits", body)
    assert response.status_code == 400, response.text
    assert fragment in response.json()["error"]["message"]
    assert (await admin(fresh, "GET", "/adapters/legal-v2")).status_code == 200
