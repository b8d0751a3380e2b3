"""Aliases with sticky canary splits (issue 13 item 6): the split itself, then the real app in
front of the fake vLLM, driven by the official ``openai`` SDK and the admin API.

``style`` has two versions here: v1 (registered by the fixture, then no longer active) and v2
(registered as a new version, so active). The alias ``legal`` splits over both, so a request
for it leases a version that is not the active one.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio

from adapters.registry import AliasRecord, AliasTarget, NewVersion, Registry
from gateway.inference.aliases import (
    AliasBook,
    CanaryWatch,
    affinity_of,
    pick_target,
    rolled_back,
)
from loadtest.fake_vllm import Recorded
from loadtest.fake_vllm.engine import Reply, json_reply
from tests.adapters.builders import write_adapter
from tests.gateway.conftest import Gateway, GatewayFactory
from tests.gateway.openai_env import ADAPTER, BASE

TOKEN = "alias-admin-token-0123456789"
ALIAS = "legal"
NOW = datetime.now(UTC)


def split(stable: int, canary: int) -> list[dict[str, Any]]:
    return [
        {"adapter": ADAPTER, "version": 1, "weight": stable},
        {"adapter": ADAPTER, "version": 2, "weight": canary},
    ]


def record(stable: int, canary: int) -> AliasRecord:
    targets = tuple(AliasTarget(ADAPTER, v, w) for v, w in ((1, stable), (2, canary)))
    return AliasRecord(ALIAS, targets, NOW, NOW)


# --- the split, no server ---------------------------------------------------------------------
def test_ninety_ten_over_2000_users_lands_within_two_points() -> None:
    alias = record(90, 10)
    picks = Counter(
        pick_target(alias, affinity_of(f"user-{i}", None, None)).version for i in range(2000)
    )
    assert abs(picks[2] / 2000 - 0.10) <= 0.02, picks


def test_the_same_user_always_gets_the_same_version() -> None:
    alias = record(90, 10)
    for i in range(500):
        affinity = affinity_of(f"user-{i}", "key-1", "10.0.0.1")
        first = pick_target(alias, affinity)
        assert all(pick_target(alias, affinity) == first for _ in range(3))


def test_affinity_prefers_user_then_key_then_address() -> None:
    assert affinity_of("u", "k", "a") == "user:u"
    assert affinity_of(None, "k", "a") == "key:k"
    assert affinity_of(None, None, "a") == "addr:a"


def test_zero_weight_target_gets_nothing() -> None:
    alias = record(100, 0)
    assert {pick_target(alias, f"u{i}").version for i in range(1000)} == {1}


def test_rollback_moves_the_canary_weight_to_the_stable_version() -> None:
    alias = record(90, 10)
    canary = alias.targets[1]
    assert rolled_back(alias, canary) == (AliasTarget(ADAPTER, 1, 100), AliasTarget(ADAPTER, 2, 0))


def test_canary_watch_trips_only_on_a_full_window_over_the_threshold() -> None:
    watch = CanaryWatch(window=4, threshold=0.5)
    target = AliasTarget(ADAPTER, 2, 10)
    assert not any(watch.note(ALIAS, target, True) for _ in range(3))  # window not full
    assert watch.note(ALIAS, target, False)  # 3 of 4 failed
    off = CanaryWatch(window=0, threshold=0.5)
    assert not any(off.note(ALIAS, target, True) for _ in range(50))


# --- the app ----------------------------------------------------------------------------------
@pytest_asyncio.fixture(loop_scope="session")
async def gw(make_gateway: GatewayFactory) -> AsyncIterator[Gateway]:
    async with make_gateway(admin_token=TOKEN, alias_rollback_window=20) as gw:
        second = write_adapter(
            gw.settings.data_dir / "adapters" / "style-v2", base_model=BASE, seed=2
        )
        await gw.lifecycle.register(ADAPTER, second, new_version=True)
        gw.fake.requests.clear()
        yield gw


def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


async def put_alias(gw: Gateway, name: str, body: Any) -> httpx.Response:
    return await gw.http.put(f"/admin/aliases/{name}", json=body, headers=admin_headers())


def upstream_of(gw: Gateway, version: int) -> str:
    found = gw.lifecycle.registry.get(ADAPTER)
    assert found is not None
    v = found.version(version)
    assert v is not None
    return v.upstream_name


def sdk(gw: Gateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)


def upstream_models(gw: Gateway) -> list[str]:
    return [r.json()["model"] for r in gw.fake.requests if r.path.endswith("/completions")]


@pytest.mark.asyncio(loop_scope="session")
async def test_alias_split_is_sticky_and_answers_under_the_alias(gw: Gateway) -> None:
    assert (await put_alias(gw, ALIAS, {"targets": split(90, 10)})).status_code == 200
    client = sdk(gw)
    users = [f"user-{i}" for i in range(200)]
    answers = await asyncio.gather(
        *(
            client.chat.completions.create(
                model=ALIAS, messages=[{"role": "user", "content": "hi"}], user=user
            )
            for user in users
        )
    )
    assert {a.model for a in answers} == {ALIAS}
    sent = upstream_models(gw)
    v1, v2 = upstream_of(gw, 1), upstream_of(gw, 2)
    assert set(sent) == {v1, v2}  # the non-active v1 was leased too
    assert 0.02 <= sent.count(v2) / len(sent) <= 0.25
    # One user, many requests: one version (at 50/50, so a random pick would show).
    assert (await put_alias(gw, ALIAS, {"targets": split(50, 50)})).status_code == 200
    gw.fake.requests.clear()
    for _ in range(10):
        await client.completions.create(model=ALIAS, prompt="x", user="user-7")
    assert len(set(upstream_models(gw))) == 1
    # Streamed too: every chunk under the alias.
    stream = await client.chat.completions.create(
        model=ALIAS, messages=[{"role": "user", "content": "hi"}], user="user-7", stream=True
    )
    assert {chunk.model async for chunk in stream} == {ALIAS}
    assert len(set(upstream_models(gw))) == 1
    # Listed by /v1/models, and the metrics carry the version.
    assert ALIAS in {m.id async for m in client.models.list()}
    scrape = (await gw.http.get("/metrics")).text
    assert f'lora_gateway_alias_requests_total{{adapter="{ADAPTER}",alias="{ALIAS}"' in scrape
    assert 'version="2"' in scrape


@pytest.mark.asyncio(loop_scope="session")
async def test_weight_change_mid_traffic_fails_nothing(gw: Gateway) -> None:
    assert (await put_alias(gw, ALIAS, {"targets": split(50, 50)})).status_code == 200
    release = asyncio.Event()

    async def slow(request: Recorded) -> Reply | None:
        await release.wait()
        return None

    gw.fake.handler = slow
    client = sdk(gw)
    in_flight = [
        asyncio.create_task(client.completions.create(model=ALIAS, prompt="x", user=f"u{i}"))
        for i in range(40)
    ]
    for _ in range(200):
        if len(gw.fake.requests) >= 40:
            break
        await asyncio.sleep(0.01)
    assert (await put_alias(gw, ALIAS, {"targets": split(0, 100)})).status_code == 200
    release.set()
    answers = await asyncio.gather(*in_flight)
    assert {a.model for a in answers} == {ALIAS}
    gw.fake.requests.clear()
    await client.completions.create(model=ALIAS, prompt="x", user="u1")
    assert upstream_models(gw) == [upstream_of(gw, 2)]


@pytest.mark.asyncio(loop_scope="session")
async def test_canary_rolls_back_to_zero_when_its_engine_answers_5xx(gw: Gateway) -> None:
    assert (await put_alias(gw, ALIAS, {"targets": split(50, 50)})).status_code == 200
    canary = upstream_of(gw, 2)

    async def fail_canary(request: Recorded) -> Reply | None:
        if request.path.endswith("/completions") and request.json()["model"] == canary:
            return json_reply({"error": {"message": "boom", "type": "InternalServerError"}}, 500)
        return None

    gw.fake.handler = fail_canary
    client = sdk(gw)
    failed = 0
    for i in range(400):
        try:
            await client.completions.create(model=ALIAS, prompt="x", user=f"r{i}")
        except openai.InternalServerError:
            failed += 1
        shown = (await gw.http.get(f"/admin/aliases/{ALIAS}", headers=admin_headers())).json()
        if shown["targets"][1]["weight"] == 0:
            break
    assert failed == 20
    assert [t["weight"] for t in shown["targets"]] == [100, 0]
    # Persisted, and nothing goes to the canary any more.
    stored = gw.lifecycle.registry.list_aliases()
    assert [t.weight for t in stored[0].targets] == [100, 0]
    gw.fake.requests.clear()
    for i in range(20):
        await client.completions.create(model=ALIAS, prompt="x", user=f"after-{i}")
    assert canary not in upstream_models(gw)
    scrape = (await gw.http.get("/metrics")).text
    assert "lora_gateway_alias_rollbacks_total" in scrape
    assert f'alias="{ALIAS}",version="2"}} 1.0' in scrape


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"targets": split(90, 10), "extra": 1}, 400, "extra"),
        ({"targets": [{**split(90, 10)[0], "colour": "red"}]}, 400, "colour"),
        ({"targets": split(110, -10)}, 400, "weight"),
        ({"targets": split(80, 10)}, 400, "sum to 100"),
        ({"targets": []}, 400, "targets"),
        ({"targets": [{"adapter": "nope", "version": 1, "weight": 100}]}, 404, "'nope'"),
        ({"targets": [{"adapter": ADAPTER, "version": 9, "weight": 100}]}, 404, "no version 9"),
    ],
)
@pytest.mark.asyncio(loop_scope="session")
async def test_bad_alias_bodies_say_what_to_fix(
    gw: Gateway, body: Any, status: int, words: str
) -> None:
    response = await put_alias(gw, "other", body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert words in error["message"], error


@pytest.mark.asyncio(loop_scope="session")
async def test_alias_names_must_not_clash_and_follow_the_rule(gw: Gateway) -> None:
    clash = await put_alias(gw, ADAPTER, {"targets": split(100, 0)})
    assert (
        clash.status_code == 409 and "clashes with the adapter" in clash.json()["error"]["message"]
    )
    base = await put_alias(gw, BASE, {"targets": split(100, 0)})
    assert base.status_code == 409 and "base model" in base.json()["error"]["message"]
    bad = await put_alias(gw, "-bad", {"targets": split(100, 0)})
    assert 400 <= bad.status_code < 500
    missing = await gw.http.get("/admin/aliases/none", headers=admin_headers())
    assert missing.status_code == 404 and "'none'" in missing.json()["error"]["message"]
    # An adapter an alias targets cannot be deleted (409 naming the alias), and keeps serving.
    assert (await put_alias(gw, "temp", {"targets": split(100, 0)})).status_code == 200
    refused = await gw.http.delete(f"/admin/adapters/{ADAPTER}", headers=admin_headers())
    assert refused.status_code == 409 and "temp" in refused.json()["error"]["message"]
    answer = await sdk(gw).completions.create(model="temp", prompt="x")
    assert answer.model == "temp"
    # List, delete.
    assert (await put_alias(gw, "temp", {"targets": split(100, 0)})).status_code == 200
    listed = (await gw.http.get("/admin/aliases", headers=admin_headers())).json()["data"]
    assert "temp" in {a["name"] for a in listed}
    deleted = await gw.http.delete("/admin/aliases/temp", headers=admin_headers())
    assert deleted.status_code == 200
    gone = await gw.http.delete("/admin/aliases/temp", headers=admin_headers())
    assert gone.status_code == 404


@pytest.mark.asyncio(loop_scope="session")
async def test_models_list_shows_an_alias_only_to_keys_scoped_to_it(gw: Gateway) -> None:
    assert (await put_alias(gw, ALIAS, {"targets": split(90, 10)})).status_code == 200
    secrets = {}
    for name, models in (("alias-key", [ALIAS]), ("adapter-key", [ADAPTER])):
        made = await gw.http.post(
            "/admin/keys", json={"name": name, "models": models}, headers=admin_headers()
        )
        assert made.status_code in (200, 201), made.text
        secrets[name] = made.json()["secret"]
    scoped = openai.AsyncOpenAI(
        base_url=f"{gw.url}/v1", api_key=secrets["alias-key"], max_retries=0
    )
    assert [m.id async for m in scoped.models.list()] == [ALIAS]
    answer = await scoped.completions.create(model=ALIAS, prompt="x")
    assert answer.model == ALIAS
    other = openai.AsyncOpenAI(
        base_url=f"{gw.url}/v1", api_key=secrets["adapter-key"], max_retries=0
    )
    assert ALIAS not in {m.id async for m in other.models.list()}
    with pytest.raises(openai.APIStatusError):
        await other.completions.create(model=ALIAS, prompt="x")


@pytest.mark.asyncio(loop_scope="session")
async def test_another_replica_sees_an_alias_change(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    one, two = Registry(url), Registry(url)
    try:
        stored = NewVersion(BASE, "/adapters/x", 8, 16.0, ("q_proj",), "a" * 64, "c" * 64, 1)
        one.add(ADAPTER, stored, pinned=False)
        mine, theirs = AliasBook(one), AliasBook(two)
        await theirs.refresh()
        follower = asyncio.create_task(theirs.follow(0.01))
        try:
            await mine.put(ALIAS, (AliasTarget(ADAPTER, 1, 100),))
            for _ in range(200):
                if theirs.get(ALIAS) is not None:
                    break
                await asyncio.sleep(0.01)
            assert theirs.pick(ALIAS, "u") == AliasTarget(ADAPTER, 1, 100)
            await mine.delete(ALIAS)
            for _ in range(200):
                if theirs.get(ALIAS) is None:
                    break
                await asyncio.sleep(0.01)
            assert theirs.get(ALIAS) is None
        finally:
            follower.cancel()
    finally:
        one.close()
        two.close()


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"targets": [{**split(90, 10)[0], "weight": 50.5}, split(90, 10)[1]]}, 400, "weight"),
        ({"targets": [{"adapter": ADAPTER, "version": 0, "weight": 100}]}, 400, "version"),
        ({"targets": [{"adapter": ADAPTER, "version": 1}]}, 400, "weight"),
        ({"targets": [{"adapter": ADAPTER, "version": 1, "weight": 1}] * 17}, 400, "targets"),
        ({"targets": [{"adapter": "", "version": 1, "weight": 100}]}, 400, "adapter"),
        ({}, 400, "targets"),
        ([], 400, ""),
    ],
)
@pytest.mark.asyncio(loop_scope="session")
async def test_more_bad_alias_bodies_say_what_to_fix(
    gw: Gateway, body: Any, status: int, words: str
) -> None:
    response = await put_alias(gw, "other", body)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]["message"]
    assert (await gw.http.get("/admin/aliases/other", headers=admin_headers())).status_code == 404


@pytest.mark.asyncio(loop_scope="session")
async def test_the_same_version_twice_in_one_alias_is_refused(gw: Gateway) -> None:
    twice = [
        {"adapter": ADAPTER, "version": 1, "weight": 50},
        {"adapter": ADAPTER, "version": 1, "weight": 50},
    ]
    response = await put_alias(gw, "twice", {"targets": twice})
    assert response.status_code == 400, response.text
    assert "each adapter version once" in response.json()["error"]["message"]
    long_name = await put_alias(gw, "x" * 200, {"targets": split(100, 0)})
    assert 400 <= long_name.status_code < 500
