"""``lora-gateway keys create|list|show|update|revoke|rotate`` against a served gateway (uvicorn
on a free port, the fake upstream behind it), with the official ``openai`` SDK using the keys.

The CLI is synchronous, so it runs in a worker thread while the gateway serves on the loop.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import openai
import pytest
import pytest_asyncio
from pydantic import SecretStr
from typer.testing import CliRunner

from gateway.cli import build_cli
from tests.gateway.conftest import Gateway, GatewayFactory
from tests.gateway.openai_env import BASE

ADMIN = "test-admin-token-cli-0123456789"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gw(make_gateway: GatewayFactory) -> AsyncIterator[Gateway]:
    async with make_gateway(admin_token=SecretStr(ADMIN)) as g:
        yield g


async def keys(gw: Gateway, *args: str) -> tuple[int, str]:
    argv = ["keys", *args, "--url", gw.url, "--admin-token", ADMIN]
    result = await asyncio.to_thread(CliRunner().invoke, build_cli(), argv)
    return result.exit_code, result.output


def secret_of(output: str) -> str:
    found = re.search(r"secret: (lgw-\S+)", output)
    assert found, output
    return found.group(1)


async def test_keys_cli_round_trip(gw: Gateway) -> None:
    code, out = await keys(gw, "create", "cli-team", "--model", BASE, "--rpm", "2")
    assert code == 0, out
    secret = secret_of(out)
    assert "will not show it again" in out

    code, out = await keys(gw, "list")
    assert code == 0 and "cli-team" in out and "rpm=2" in out and secret not in out
    code, out = await keys(gw, "update", "cli-team", "--rpm", "5", "--tpm", "100")
    assert code == 0 and "rpm=5, tpm=100" in out
    code, out = await keys(gw, "update", "cli-team", "--clear", "tpm")
    assert code == 0 and "rpm=5" in out and "tpm" not in out
    code, out = await keys(gw, "show", "cli-team")
    assert code == 0 and "active" in out and "models: " + BASE in out

    client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=secret, max_retries=0)
    await client.models.list()
    code, out = await keys(gw, "rotate", "cli-team")
    assert code == 0
    new_secret = secret_of(out)
    with pytest.raises(openai.AuthenticationError):
        await client.models.list()
    await client.close()

    code, out = await keys(gw, "revoke", "cli-team")
    assert code == 0 and "revoked" in out
    client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=new_secret, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await client.models.list()
    await client.close()


async def test_keys_cli_prints_the_gateways_error(gw: Gateway) -> None:
    code, out = await keys(gw, "create", "bad", "--model", "nope-*")
    assert code == 1 and "'nope-*' match no model" in out and "HTTP 400" in out
    code, out = await keys(gw, "create", "bad", "--rpm", "-3")
    assert code == 1 and "limits.rpm" in out
    code, out = await keys(gw, "show", "nobody")
    assert code == 1 and "key_not_found" in out
