"""Limits shared by replicas: two gateway apps, one registry database, one real Redis.

A key at 30 requests per minute sending 100 requests spread over both replicas gets exactly 30
answers; a key revoked through one replica is refused by the other within 2 seconds.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio
from pydantic import SecretStr

from loadtest.fake_vllm import Recorded
from tests.gateway.conftest import Gateway, GatewayFactory
from tests.gateway.openai_env import BASE

ADMIN = "test-admin-token-redis-0123456789"
MESSAGES: Any = [{"role": "user", "content": "hi"}]


@pytest_asyncio.fixture(loop_scope="session")
async def replicas(
    make_gateway: GatewayFactory, redis_url: str, tmp_path: Path
) -> AsyncIterator[list[Gateway]]:
    shared_db = f"sqlite:///{tmp_path / 'shared-registry.db'}"
    async with AsyncExitStack() as stack:
        gateways = [
            await stack.enter_async_context(
                make_gateway(
                    admin_token=SecretStr(ADMIN), redis_url=redis_url, database_url=shared_db
                )
            )
            for _ in range(2)
        ]
        yield gateways


def completions(gw: Gateway) -> list[Recorded]:
    return [r for r in gw.fake.requests if r.path.endswith("completions")]


async def _create(gw: Gateway, name: str, **fields: Any) -> str:
    response = await gw.http.post(
        "/admin/keys",
        json={"name": name, **fields},
        headers={"authorization": f"Bearer {ADMIN}"},
    )
    assert response.status_code == 201, response.text
    secret: str = response.json()["secret"]
    return secret


async def test_30_rpm_through_two_replicas_sharing_redis_gets_exactly_30(
    replicas: list[Gateway],
) -> None:
    secret = await _create(replicas[0], f"shared-rpm-{time.time_ns()}", limits={"rpm": 30})
    clients = [
        openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=secret, max_retries=0)
        for gw in replicas
    ]

    async def one(i: int) -> httpx.Response:
        client = clients[i % 2]
        try:
            raw = await client.chat.completions.with_raw_response.create(
                model=BASE, messages=MESSAGES
            )
            return raw.http_response
        except openai.RateLimitError as exc:
            return exc.response

    responses = await asyncio.gather(*(one(i) for i in range(100)))
    for client in clients:
        await client.close()
    statuses = [r.status_code for r in responses]
    assert (statuses.count(200), statuses.count(429)) == (30, 70)
    answered = [len(completions(gw)) for gw in replicas]
    assert sum(answered) == 30 and min(answered) > 0  # both replicas answered
    for response in responses:
        assert response.headers["x-ratelimit-limit-requests"] == "30"
        if response.status_code == 429:
            assert int(response.headers["retry-after"]) >= 1
    remaining = sorted(
        int(r.headers["x-ratelimit-remaining-requests"]) for r in responses if r.status_code == 200
    )
    assert remaining == list(range(30))


async def test_revocation_through_one_replica_reaches_the_other_within_2_s(
    replicas: list[Gateway],
) -> None:
    name = f"shared-revoke-{time.time_ns()}"
    secret = await _create(replicas[0], name)
    other = openai.AsyncOpenAI(base_url=f"{replicas[1].url}/v1", api_key=secret, max_retries=0)
    await other.models.list()  # replica 1 caches the key as valid
    revoked = await replicas[0].http.post(
        f"/admin/keys/{name}/revoke", headers={"authorization": f"Bearer {ADMIN}"}
    )
    assert revoked.status_code == 200
    started = time.monotonic()
    with pytest.raises(openai.AuthenticationError):
        while time.monotonic() - started < 2.0:
            await other.models.list()
            await asyncio.sleep(0.05)
    await other.close()


async def test_an_unreachable_redis_refuses_limited_keys_with_503(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{sock.getsockname()[1]}/0"
    async with make_gateway(admin_token=SecretStr(ADMIN), redis_url=dead) as gw:
        secret = await _create(gw, "limited", limits={"rpm": 5})
        client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=secret, max_retries=0)
        with pytest.raises(openai.InternalServerError) as caught:
            await client.completions.create(model=BASE, prompt="hi")
        await client.close()
        assert caught.value.status_code == 503
        body = caught.value.body
        assert isinstance(body, dict) and body["code"] == "limits_unavailable"
        assert completions(gw) == []  # fails closed: nothing reached the engine
