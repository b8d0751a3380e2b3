"""``lora-gateway aliases set|list|show|delete`` against a served gateway (uvicorn on a free
port, the fake upstream behind it), with the official ``openai`` SDK asking for the alias.

The CLI is synchronous, so it runs in a worker thread while the gateway serves on the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import openai
import pytest
import pytest_asyncio
import typer
from pydantic import SecretStr
from typer.testing import CliRunner

from gateway.cli import build_cli
from gateway.commands.aliases import parse_target
from tests.adapters.builders import write_adapter
from tests.gateway.conftest import Gateway, GatewayFactory
from tests.gateway.openai_env import ADAPTER, BASE

ADMIN = "test-admin-token-alias-cli-0123456789"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gw(make_gateway: GatewayFactory) -> AsyncIterator[Gateway]:
    async with make_gateway(admin_token=SecretStr(ADMIN)) as g:
        second = write_adapter(
            g.settings.data_dir / "adapters" / "style-v2", base_model=BASE, seed=2
        )
        await g.lifecycle.register(ADAPTER, second, new_version=True)
        yield g


async def aliases(gw: Gateway, *args: str) -> tuple[int, str]:
    argv = ["aliases", *args, "--url", gw.url, "--admin-token", ADMIN]
    result = await asyncio.to_thread(CliRunner().invoke, build_cli(), argv)
    return result.exit_code, result.output


def upstream_models(gw: Gateway) -> list[str]:
    return [r.json()["model"] for r in gw.fake.requests if r.path.endswith("/completions")]


async def test_aliases_cli_round_trip(gw: Gateway) -> None:
    code, out = await aliases(gw, "list")
    assert code == 0 and "no aliases" in out
    code, out = await aliases(gw, "set", "cli-legal", f"{ADAPTER}@1=90", f"{ADAPTER}@2=10")
    assert code == 0, out
    assert f"cli-legal: {ADAPTER}@1=90, {ADAPTER}@2=10" in out

    client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)
    gw.fake.requests.clear()
    reply = await client.chat.completions.create(
        model="cli-legal", messages=[{"role": "user", "content": "hi"}], user="someone"
    )
    assert reply.model == "cli-legal" and len(upstream_models(gw)) == 1

    # every user to version 2 now: the change takes effect with the next request
    code, out = await aliases(gw, "set", "cli-legal", f"{ADAPTER}@1=0", f"{ADAPTER}@v2=100")
    assert code == 0 and f"{ADAPTER}@2=100" in out
    gw.fake.requests.clear()
    for user in ("a", "b", "c"):
        await client.chat.completions.create(
            model="cli-legal", messages=[{"role": "user", "content": "hi"}], user=user
        )
    registered = gw.lifecycle.registry.get(ADAPTER)
    assert registered is not None
    v2 = registered.version(2)
    assert v2 is not None and set(upstream_models(gw)) == {v2.upstream_name}

    code, out = await aliases(gw, "list")
    assert code == 0 and "cli-legal" in out and f"{ADAPTER}@2=100" in out
    code, out = await aliases(gw, "show", "cli-legal")
    assert code == 0 and out.startswith(f"cli-legal: {ADAPTER}@1=0, {ADAPTER}@2=100")
    code, out = await aliases(gw, "delete", "cli-legal")
    assert code == 0 and "deleted alias cli-legal" in out
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(
            model="cli-legal", messages=[{"role": "user", "content": "hi"}]
        )
    await client.close()


async def test_aliases_cli_prints_the_gateways_error(gw: Gateway) -> None:
    code, out = await aliases(gw, "set", "bad", f"{ADAPTER}@1=50", f"{ADAPTER}@2=40")
    assert code == 1 and "HTTP 400" in out and "100" in out
    code, out = await aliases(gw, "set", "bad", f"{ADAPTER}@9=100")
    assert code == 1 and "9" in out
    code, out = await aliases(gw, "set", BASE, f"{ADAPTER}@1=100")
    assert code == 1 and BASE in out
    code, out = await aliases(gw, "show", "nobody")
    assert code == 1 and "HTTP 404" in out and "nobody" in out
    code, out = await aliases(gw, "delete", "nobody")
    assert code == 1 and "HTTP 404" in out
    code, out = await aliases(gw, "set", "bad", "style=100")
    assert code == 2 and "ADAPTER@VERSION=WEIGHT" in out
    code, out = await aliases(gw, "set", "bad")
    assert code == 2


def test_parse_target() -> None:
    assert parse_target("legal-lora@3=90") == {"adapter": "legal-lora", "version": 3, "weight": 90}
    assert parse_target(" a.b_c@v12=0 ") == {"adapter": "a.b_c", "version": 12, "weight": 0}
    for bad in ("legal-lora=90", "legal-lora@3", "@3=90", "x@3=-1", "x@3=1000", "x@y=1"):
        with pytest.raises(typer.BadParameter):
            parse_target(bad)
