"""Sampling defaults on the wire: the base model's model card, an adapter's own, the client's.

The gateway's base model is a prepared SmolLM2 directory (its recipe's marker, no weights: the
engine is the FAKE vLLM), served as ``base-model``; what the fake receives is what vLLM would
have sampled with. The adapter's defaults are set the admin API's way (the lifecycle).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from gateway.engines.basemodels import SMOLLM2
from tests.gateway.conftest import Gateway, GatewayFactory
from tests.gateway.openai_env import ADAPTER, BASE, chat, completion

CARD = {"temperature": 0.2, "top_p": 0.9}
ADAPTER_DEFAULTS = {"temperature": 0.7, "max_tokens": 5, "stop": ["###"]}


@pytest_asyncio.fixture(loop_scope="session")
async def carded(make_gateway: GatewayFactory) -> AsyncIterator[Gateway]:
    async with make_gateway(recipe=SMOLLM2, served_model_name=BASE) as gw:
        await gw.lifecycle.set_sampling_defaults(ADAPTER, ADAPTER_DEFAULTS)
        yield gw


async def forwarded(gw: Gateway, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await gw.http.post(path, json=body)
    assert response.status_code == 200, response.text
    sent: dict[str, Any] = gw.fake.requests[-1].json()
    return sent


SAMPLING = ("temperature", "top_p", "max_tokens", "max_completion_tokens", "stop")


def sampling_of(body: dict[str, Any]) -> dict[str, Any]:
    return {key: body[key] for key in SAMPLING if key in body}


@pytest.mark.parametrize("stream", [False, True])
async def test_the_base_model_samples_as_its_model_card_says(carded: Gateway, stream: bool) -> None:
    chat_body = await forwarded(carded, "/v1/chat/completions", chat(stream=stream))
    assert sampling_of(chat_body) == CARD
    prompt_body = await forwarded(carded, "/v1/completions", completion(stream=stream))
    assert sampling_of(prompt_body) == CARD


async def test_what_the_client_sends_always_wins(carded: Gateway) -> None:
    greedy = await forwarded(carded, "/v1/chat/completions", chat(temperature=0.0))
    assert sampling_of(greedy) == {"temperature": 0.0, "top_p": 0.9}
    # null is "the default": the model card's.
    unset = await forwarded(carded, "/v1/chat/completions", chat(temperature=None, top_p=1.0))
    assert sampling_of(unset) == {"temperature": 0.2, "top_p": 1.0}


async def test_an_adapter_s_defaults_win_over_the_base_model_s(carded: Gateway) -> None:
    body = await forwarded(carded, "/v1/chat/completions", chat(ADAPTER))
    assert body["model"] == carded.adapter_upstream
    assert sampling_of(body) == {"temperature": 0.7, "top_p": 0.9, "max_tokens": 5, "stop": ["###"]}
    # max_completion_tokens is chat's max_tokens: the client chose it.
    body = await forwarded(
        carded, "/v1/chat/completions", chat(ADAPTER, max_completion_tokens=9, stop="\n")
    )
    assert sampling_of(body) == {
        "temperature": 0.7,
        "top_p": 0.9,
        "max_completion_tokens": 9,
        "stop": "\n",
    }


async def test_no_model_card_no_change(gateway: Gateway) -> None:
    body = await forwarded(gateway, "/v1/chat/completions", chat())
    assert sampling_of(body) == {}
