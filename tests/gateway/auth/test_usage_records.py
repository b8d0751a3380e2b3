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
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from sqlalchemy import event
from sqlalchemy.exc import IntegrityError

from gateway.auth.key_store import KeyStore
from gateway.auth.usage_records import UsageRecorder, UsageStore
from gateway.observability.key_tokens import KeyTokenMetrics
from gateway.observability.metrics import GatewayMetrics
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


async def token_series(gw: Gateway) -> dict[tuple[str, str, str], float]:
    """``lora_gateway_key_tokens_total`` as {(key, model, kind): value}."""
    response = await gw.http.get("/metrics")
    assert response.status_code == 200
    out = {}
    for family in text_string_to_metric_families(response.text):
        if family.name == "lora_gateway_key_tokens":
            for sample in family.samples:
                if sample.name == "lora_gateway_key_tokens_total":
                    labels = sample.labels
                    out[(labels["key"], labels["model"], labels["kind"])] = sample.value
    return out


async def test_tokens_per_key_and_model_as_prometheus_series(gw: Gateway) -> None:
    """The engine's counts per key name (never the secret) and model, prompt and completion."""
    before = await token_series(gw)
    created = await gw.http.post(
        "/admin/keys", json={"name": "metrics-b"}, headers={"authorization": f"Bearer {ADMIN}"}
    )
    secret = created.json()["secret"]
    client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=secret, max_retries=0)
    chat = await client.chat.completions.create(model=BASE, messages=MESSAGES)
    stream = await client.chat.completions.create(
        model=ADAPTER, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    (streamed,) = [chunk.usage async for chunk in stream if chunk.usage is not None]
    with pytest.raises(openai.NotFoundError):  # unknown model: no tokens, no series
        await client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    await client.close()
    static = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=STATIC_KEY, max_retries=0)
    by_static = await static.completions.create(model=BASE, prompt="hi")
    await static.close()
    assert chat.usage is not None and by_static.usage is not None

    after = await token_series(gw)
    added = {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}
    assert added == {
        ("metrics-b", BASE, "prompt"): chat.usage.prompt_tokens,
        ("metrics-b", BASE, "completion"): chat.usage.completion_tokens,
        ("metrics-b", ADAPTER, "prompt"): streamed.prompt_tokens,
        ("metrics-b", ADAPTER, "completion"): streamed.completion_tokens,
        ("__static__", BASE, "prompt"): by_static.usage.prompt_tokens,
        ("__static__", BASE, "completion"): by_static.usage.completion_tokens,
    }
    text = (await gw.http.get("/metrics")).text
    assert secret not in text and secret[:12] not in text and "no-such-model" not in text


def test_token_series_labels_stay_bounded_by_the_registry() -> None:
    """A model the registry does not know is ``__other__``; an alias is named when it reached a
    registered adapter (aliases cannot share an adapter's or the base model's name)."""
    metrics = GatewayMetrics(process_metrics=False)
    metrics.bind_adapters(registered=lambda: {"legal-lora"})
    tokens = KeyTokenMetrics(metrics)
    tokens.count("team-a", "legal-lora", "legal-lora", 3, 4)
    tokens.count("team-a", "legal", "legal-lora", 1, 0)
    tokens.count("team-a", "made-up-1", None, 5, 5)
    tokens.count("team-a", "made-up-2", "not-registered", 5, 5)
    samples = {
        (s.labels["model"], s.labels["kind"]): s.value
        for family in tokens.tokens.collect()
        for s in family.samples
        if s.name.endswith("_total")
    }
    assert samples == {
        ("legal-lora", "prompt"): 3,
        ("legal-lora", "completion"): 4,
        ("legal", "prompt"): 1,
        ("__other__", "prompt"): 10,
        ("__other__", "completion"): 10,
    }


async def test_a_flush_writes_all_its_rows_in_one_transaction(tmp_path: Path) -> None:
    """One commit per flush, not one per (hour, key, model): with 10,000 keys each row's own
    transaction cost about 3 ms of CPU and 10 ms of fsync, more than the requests themselves."""
    store = KeyStore.open(f"sqlite:///{tmp_path / 'registry.db'}")
    commits = 0

    def count(connection: object) -> None:
        nonlocal commits
        commits += 1

    recorder = UsageRecorder(UsageStore(store.engine))
    event.listen(store.engine, "commit", count)
    for i in range(50):
        recorder.record(f"key_{i}", "legal", "legal", 10, 5)
    await recorder.flush()
    assert commits == 1
    for i in range(60):  # 50 existing rows, 10 new
        recorder.record(f"key_{i}", "legal", "legal", 1, 1)
    await recorder.flush()
    assert commits == 2
    lines = {line.key_id: line for line in recorder.store.query()}
    assert len(lines) == 60
    assert (lines["key_0"].requests, lines["key_0"].prompt_tokens) == (2, 11)
    assert (lines["key_59"].requests, lines["key_59"].completion_tokens) == (1, 1)
    store.close()


async def test_a_flush_that_loses_an_insert_race_retries_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another replica inserted one of the same new rows first (the unique constraint refuses
    ours): the whole flush is rolled back and done again, so nothing is counted twice or lost."""
    store = KeyStore.open(f"sqlite:///{tmp_path / 'registry.db'}")
    recorder = UsageRecorder(UsageStore(store.engine))
    recorder.record("key_a", "legal", "legal", 1, 1)
    await recorder.flush()
    recorder.record("key_a", "legal", "legal", 2, 2)  # an existing row: an UPDATE
    recorder.record("key_b", "legal", "legal", 3, 3)  # a new row: an INSERT
    real = UsageStore._write
    tries = 0

    def losing_once(session: Any, sums: Any) -> None:
        nonlocal tries
        tries += 1
        real(session, sums)
        if tries == 1:
            session.flush()  # our UPDATE and INSERT ran; then the constraint refuses the insert
            raise IntegrityError("INSERT INTO usage_hourly", None, Exception("UNIQUE failed"))

    monkeypatch.setattr(UsageStore, "_write", staticmethod(losing_once))
    await recorder.flush()
    assert tries == 2
    lines = {line.key_id: line for line in recorder.store.query()}
    assert (lines["key_a"].requests, lines["key_a"].prompt_tokens) == (2, 3)
    assert (lines["key_b"].requests, lines["key_b"].prompt_tokens) == (1, 3)
    store.close()
