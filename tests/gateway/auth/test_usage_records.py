"""Usage records: tokens the engine counted, per key and model per hour, at ``/admin/usage``.

Through the official ``openai`` SDK against the real app over the fake upstream (which counts
7 prompt and 2 completion tokens for every answer, streamed or not).
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest_asyncio
from pydantic import SecretStr

from gateway.auth.key_store import KeyStore
from gateway.auth.usage_records import UsageRecorder, UsageStore
from tests.gateway.conftest import Gateway, GatewayFactory
from tests.gateway.openai_env import ADAPTER, BASE

ADMIN = "test-admin-token-usage-0123456789"
STATIC_KEY = "sk-static-usage-0123456789"
MESSAGES: Any = [{"role": "user", "content": "hi"}]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gw(make_gateway: GatewayFactory) -> AsyncIterator[Gateway]:
    async with make_gateway(
        admin_token=SecretStr(ADMIN), api_keys=[SecretStr(STATIC_KEY)], usage_flush_interval_s=60
    ) as g:
        yield g


async def admin_get(gw: Gateway, path: str, **params: str) -> httpx.Response:
    return await gw.http.get(
        f"/admin{path}", params=params, headers={"authorization": f"Bearer {ADMIN}"}
    )


async def test_usage_per_key_and_model_as_json_and_csv(gw: Gateway) -> None:
    created = await gw.http.post(
        "/admin/keys", json={"name": "usage-a"}, headers={"authorization": f"Bearer {ADMIN}"}
    )
    secret, key_id = created.json()["secret"], created.json()["id"]
    client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=secret, max_retries=0)
    chat = await client.chat.completions.create(model=BASE, messages=MESSAGES)
    plain = await client.completions.create(model=BASE, prompt="hi")
    stream = await client.chat.completions.create(
        model=ADAPTER, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    streamed_usage = [chunk.usage async for chunk in stream if chunk.usage is not None]
    await client.close()
    static = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=STATIC_KEY, max_retries=0)
    await static.chat.completions.create(model=BASE, messages=MESSAGES)
    await static.close()
    assert chat.usage is not None and plain.usage is not None and len(streamed_usage) == 1

    response = await admin_get(gw, "/usage")
    assert response.status_code == 200
    rows = {(r["key_id"], r["model"]): r for r in response.json()["data"]}
    assert set(rows) == {(key_id, BASE), (key_id, ADAPTER), ("static", BASE)}
    mine = rows[(key_id, BASE)]
    assert (mine["requests"], mine["prompt_tokens"], mine["completion_tokens"]) == (
        2,
        chat.usage.prompt_tokens + plain.usage.prompt_tokens,
        chat.usage.completion_tokens + plain.usage.completion_tokens,
    )
    assert mine["key_name"] == "usage-a" and mine["adapter"] is None
    streamed = rows[(key_id, ADAPTER)]
    assert (streamed["requests"], streamed["total_tokens"], streamed["adapter"]) == (
        1,
        streamed_usage[0].total_tokens,
        ADAPTER,
    )
    hour = datetime.fromisoformat(mine["hour"])
    assert hour.minute == 0 and hour <= datetime.now(UTC) < hour + timedelta(hours=1)

    by_key = (await admin_get(gw, "/usage", key="usage-a")).json()["data"]
    assert {r["model"] for r in by_key} == {BASE, ADAPTER}
    by_adapter = (await admin_get(gw, "/usage", adapter=ADAPTER)).json()["data"]
    assert [(r["key_id"], r["model"]) for r in by_adapter] == [(key_id, ADAPTER)]
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert (await admin_get(gw, "/usage", **{"from": later})).json()["data"] == []
    assert len((await admin_get(gw, "/usage", to=later)).json()["data"]) == 3

    as_csv = await admin_get(gw, "/usage", key=key_id, format="csv")
    assert as_csv.headers["content-type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert sorted((r["model"], int(r["total_tokens"])) for r in table) == sorted(
        [(BASE, mine["total_tokens"]), (ADAPTER, streamed["total_tokens"])]
    )


async def test_usage_filters_are_checked(gw: Gateway) -> None:
    now = datetime.now(UTC)
    backwards = await admin_get(
        gw, "/usage", **{"from": now.isoformat(), "to": (now - timedelta(hours=1)).isoformat()}
    )
    assert backwards.status_code == 400 and "must be before" in backwards.json()["error"]["message"]
    naive = await admin_get(gw, "/usage", **{"from": "2026-01-01T00:00:00"})
    assert naive.status_code == 400 and "from" in naive.json()["error"]["message"]
    unknown = await admin_get(gw, "/usage", key="nobody")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "key_not_found"
    assert (await admin_get(gw, "/usage", format="xml")).status_code == 400
    assert (await gw.http.get("/admin/usage")).status_code == 401


async def test_two_recorders_add_to_the_same_hourly_row(tmp_path: Path) -> None:
    store = KeyStore.open(f"sqlite:///{tmp_path / 'registry.db'}")
    replicas = [UsageRecorder(UsageStore(store.engine)) for _ in range(2)]
    for recorder in replicas:
        recorder.record("key_x", "legal", "legal", 10, 5)
        recorder.record("key_x", "legal", "legal", 1, None)
        await recorder.flush()
    await replicas[0].flush()  # nothing new: nothing added
    [line] = replicas[1].store.query(key_id="key_x")
    assert (line.requests, line.prompt_tokens, line.completion_tokens) == (4, 22, 10)
    store.close()
