"""Anthropic's Messages API through the gateway, driven by the official ``anthropic`` SDK
against the FAKE vLLM scripted to answer as vLLM 0.32 does (:mod:`.engine_scripts`)."""

from __future__ import annotations

import asyncio

import anthropic
import pytest

from loadtest.fake_vllm.engine import Recorded, Reply, Stream
from tests.gateway.api.engine_scripts import VLLMScript, message_body, sse
from tests.gateway.api.test_openai_routes import assert_openai_error
from tests.gateway.conftest import Gateway, GatewayFactory
from tests.gateway.openai_env import ADAPTER, BASE, access_lines

MESSAGES: list[anthropic.types.MessageParam] = [{"role": "user", "content": "hi"}]


@pytest.fixture
def script(gateway: Gateway) -> VLLMScript:
    script = VLLMScript()
    gateway.fake.handler = script.handle
    return script


def sdk(url: str, key: str = "x") -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=url, api_key=key, max_retries=0)


@pytest.mark.parametrize("model", [BASE, ADAPTER])
async def test_message_routed_renamed_and_counted(
    gateway: Gateway, script: VLLMScript, caplog: pytest.LogCaptureFixture, model: str
) -> None:
    upstream = BASE if model == BASE else gateway.adapter_upstream
    client = sdk(gateway.url)
    with caplog.at_level("INFO", logger="gateway.access"):
        raw = await client.messages.with_raw_response.create(
            model=model, max_tokens=16, messages=MESSAGES
        )
        (line,) = await access_lines(caplog, raw.headers["x-request-id"])
    await client.close()
    message = await raw.parse()
    assert message.model == model and message.content[0].type == "text"
    assert message.content[0].text == "fake answer"
    assert gateway.fake.requests[-1].json()["model"] == upstream
    assert (line["prompt_tokens"], line["completion_tokens"]) == (7, 2)


async def test_stream_renamed_and_counted(
    gateway: Gateway, script: VLLMScript, caplog: pytest.LogCaptureFixture
) -> None:
    client = sdk(gateway.url)
    with caplog.at_level("INFO", logger="gateway.access"):
        async with client.messages.stream(
            model=ADAPTER,
            max_tokens=16,
            messages=MESSAGES,
            extra_headers={"x-request-id": "mstream"},
        ) as stream:
            text = "".join([piece async for piece in stream.text_stream])
            final = await stream.get_final_message()
        (line,) = await access_lines(caplog, "mstream")
    await client.close()
    assert text == "fake answer" and final.model == ADAPTER
    assert (line["prompt_tokens"], line["completion_tokens"]) == (7, 2)
    assert line["stream"] is True


async def test_count_tokens_and_sampling_defaults(gateway: Gateway, script: VLLMScript) -> None:
    await gateway.lifecycle.set_sampling_defaults(ADAPTER, {"temperature": 0.3, "stop": ["###"]})
    client = sdk(gateway.url)
    try:
        counted = await client.messages.count_tokens(model=ADAPTER, messages=MESSAGES)
        assert counted.input_tokens == 7
        assert gateway.fake.requests[-1].json()["model"] == gateway.adapter_upstream
        await client.messages.create(model=ADAPTER, max_tokens=16, messages=MESSAGES)
        forwarded = gateway.fake.requests[-1].json()
        assert forwarded["temperature"] == 0.3 and forwarded["stop_sequences"] == ["###"]
        assert "stop" not in forwarded
    finally:
        await client.close()
        await gateway.lifecycle.set_sampling_defaults(ADAPTER, None)


async def test_unknown_model_and_bad_bodies(gateway: Gateway, script: VLLMScript) -> None:
    client = sdk(gateway.url)
    with pytest.raises(anthropic.NotFoundError):
        await client.messages.create(model="nope", max_tokens=16, messages=MESSAGES)
    await client.close()
    for body in (
        {"model": BASE, "messages": MESSAGES},  # max_tokens is required
        {"model": BASE, "max_tokens": 16, "messages": []},
        {"model": BASE, "max_tokens": 16, "messages": [{"role": "system", "content": "x"}]},
        {"model": BASE, "max_tokens": 16, "messages": MESSAGES, "temperature": 5},
    ):
        assert_openai_error(await gateway.http.post("/v1/messages", json=body), 400)
    assert gateway.fake.requests == []


async def test_the_sdk_s_x_api_key_is_accepted(make_gateway: GatewayFactory) -> None:
    async with make_gateway(api_keys=["sk-right"]) as gw:
        gw.fake.handler = VLLMScript().handle
        right, wrong = sdk(gw.url, "sk-right"), sdk(gw.url, "sk-wrong")
        message = await right.messages.create(model=BASE, max_tokens=16, messages=MESSAGES)
        assert message.model == BASE
        with pytest.raises(anthropic.AuthenticationError):
            await wrong.messages.create(model=BASE, max_tokens=16, messages=MESSAGES)
        await right.close()
        await wrong.close()


async def test_a_client_leaving_mid_stream_aborts_the_engine_request(gateway: Gateway) -> None:
    never = asyncio.Event()

    async def endless(recorded: Recorded) -> Reply:
        start = message_body(recorded.json()["model"], "")
        return Stream([sse("message_start", {"message": start}), never])

    gateway.fake.handler = endless
    body = {"model": ADAPTER, "max_tokens": 16, "messages": MESSAGES, "stream": True}
    async with gateway.http.stream("POST", "/v1/messages", json=body) as response:
        async for chunk in response.aiter_raw():
            assert b"message_start" in chunk and b"@v" not in chunk
            break
    await asyncio.wait_for(gateway.fake.requests[-1].disconnected.wait(), timeout=5)
    assert gateway.leases() == 0
