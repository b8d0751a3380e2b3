"""Client API keys on /v1/*: 401 in the OpenAI shape without the right key, open health."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import openai
import pytest
import pytest_asyncio
from pydantic import SecretStr

from gateway.auth.client_keys import ApiKeyAuth
from gateway.errors import AuthenticationError
from tests.gateway.conftest import Gateway, GatewayFactory
from tests.gateway.openai_env import chat

KEYS = ["sk-first-key-0123456789", "sk-second-key-9876543210"]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def keyed(make_gateway: GatewayFactory) -> AsyncIterator[Gateway]:
    async with make_gateway(api_keys=[SecretStr(key) for key in KEYS]) as gw:
        yield gw


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_api_key"),
        ({"authorization": "Bearer sk-wrong"}, "invalid_api_key"),
        ({"authorization": f"Basic {KEYS[0]}"}, "invalid_api_key"),
        ({"authorization": f"Bearer {KEYS[0]}x"}, "invalid_api_key"),
        ({"authorization": "Bearer " + "k" * 5000}, "invalid_api_key"),
    ],
)
async def test_v1_refuses_without_a_valid_key(
    keyed: Gateway, headers: dict[str, str], code: str
) -> None:
    for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions")):
        response = await keyed.http.request(method, path, json=chat(), headers=headers)
        assert response.status_code == 401
        error = response.json()["error"]
        assert error["type"] == "authentication_error" and error["code"] == code
        assert response.headers["www-authenticate"] == "Bearer"
        assert KEYS[0] not in response.text
    assert keyed.fake.requests == []


async def test_every_configured_key_works_with_the_sdk(keyed: Gateway) -> None:
    for key in KEYS:
        client = openai.AsyncOpenAI(base_url=f"{keyed.url}/v1", api_key=key, max_retries=0)
        answer = await client.chat.completions.create(
            model="base-model", messages=[{"role": "user", "content": "hi"}]
        )
        await client.close()
        assert answer.choices[0].message.content == " w0 w1"  # the fake's two words
    bad = openai.AsyncOpenAI(base_url=f"{keyed.url}/v1", api_key="sk-nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await bad.models.list()
    await bad.close()


async def test_health_is_open_and_keys_are_never_logged(
    keyed: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        assert (await keyed.http.get("/healthz")).status_code == 200
        assert (await keyed.http.get("/readyz")).status_code == 200
        await keyed.http.get("/v1/models", headers={"authorization": f"Bearer {KEYS[1]}"})
        await keyed.http.get("/v1/models", headers={"authorization": "Bearer sk-guess"})
    assert caplog.records
    for record in caplog.records:
        assert KEYS[1] not in record.getMessage() and "sk-guess" not in record.getMessage()


def test_auth_needs_a_key_and_compares_exactly() -> None:
    with pytest.raises(ValueError):
        ApiKeyAuth([])
    auth = ApiKeyAuth([SecretStr("abc")])
    auth.check("Bearer abc")
    auth.check("bearer  abc ")
    for header in (None, "", "Bearer", "Bearer ab", "Bearer abcd", "Token abc"):
        with pytest.raises(AuthenticationError):
            auth.check(header)
