"""The official OpenAI SDK, sync and async, through the gateway to the session's real vLLM.

The gateway runs in a thread (uvicorn, real port) in front of the shared tiny-model engine,
with two adapters in its ``--adapters-dir``: the app's lifecycle registers them and loads them
onto the engine under versioned names, served under public names (``oa-a1``), so every answer
also proves the model rename.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import openai
import pytest
import pytest_asyncio
from openai.types.chat import ChatCompletionMessageParam

from gateway.engines.managed import ManagedVLLMEngine
from gateway.settings import GatewaySettings
from tests.integration.conftest import TINY_SERVED_NAME
from tests.support.gateway_server import serve_gateway_in_thread

pytestmark = pytest.mark.integration

BASE = TINY_SERVED_NAME
A1, A2 = "oa-a1", "oa-a2"
PROMPT = "The quick brown fox"
MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "Tell me a story about a fox."}
]
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def gateway_url(
    vllm_engine: ManagedVLLMEngine,
    tiny_adapters: dict[str, Path],
    engine_settings: GatewaySettings,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    settings = engine_settings.model_copy(update={"data_dir": tmp_path_factory.mktemp("gw")})
    adapters = {A1: tiny_adapters["a1"], A2: tiny_adapters["a2"]}
    with serve_gateway_in_thread(
        settings, vllm_engine.url, BASE, adapters, engine_api_key=vllm_engine.api_key
    ) as url:
        yield url


@pytest.fixture(scope="module")
def client(gateway_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{gateway_url}/v1", api_key="unused", max_retries=0, timeout=120
    ) as sdk:
        yield sdk


@pytest_asyncio.fixture(loop_scope="session")
async def aclient(gateway_url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    sdk = openai.AsyncOpenAI(
        base_url=f"{gateway_url}/v1", api_key="unused", max_retries=0, timeout=120
    )
    try:
        yield sdk
    finally:
        await sdk.close()


def chat_text(client: openai.OpenAI, model: str) -> str:
    answer = client.chat.completions.create(
        model=model, messages=MESSAGES, temperature=0.0, max_tokens=MAX_TOKENS
    )
    assert answer.model == model
    assert answer.usage is not None and answer.usage.completion_tokens > 0
    return answer.choices[0].message.content or ""


def completion_text(client: openai.OpenAI, model: str) -> str:
    answer = client.completions.create(
        model=model, prompt=PROMPT, temperature=0.0, max_tokens=MAX_TOKENS
    )
    assert answer.model == model
    return answer.choices[0].text


def test_models_lists_base_and_adapters(client: openai.OpenAI) -> None:
    models = {model.id: model for model in client.models.list()}
    assert BASE in models and A1 in models and A2 in models
    adapter_extra, base_extra = models[A1].model_extra, models[BASE].model_extra
    assert adapter_extra is not None and adapter_extra["parent"] == BASE
    assert base_extra is not None and base_extra["parent"] is None


@pytest.mark.parametrize("model", [BASE, A1])
def test_chat_and_completions_for_base_and_adapter(client: openai.OpenAI, model: str) -> None:
    assert chat_text(client, model)
    assert completion_text(client, model)


def test_adapter_output_differs_from_base_and_from_each_other(client: openai.OpenAI) -> None:
    texts = {model: completion_text(client, model) for model in (BASE, A1, A2)}
    assert len(set(texts.values())) == 3, texts
    chats = {model: chat_text(client, model) for model in (BASE, A1)}
    assert chats[BASE] != chats[A1]


@pytest.mark.parametrize("model", [BASE, A1])
def test_streamed_text_equals_non_streamed_sync(client: openai.OpenAI, model: str) -> None:
    expected = chat_text(client, model)
    stream = client.chat.completions.create(
        model=model,
        messages=MESSAGES,
        stream=True,
        temperature=0.0,
        max_tokens=MAX_TOKENS,
    )
    pieces = []
    for chunk in stream:
        assert chunk.model == model
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
    assert "".join(pieces) == expected


@pytest.mark.parametrize("model", [BASE, A2])
async def test_streamed_text_equals_non_streamed_async(
    aclient: openai.AsyncOpenAI, model: str
) -> None:
    whole = await aclient.completions.create(
        model=model, prompt=PROMPT, temperature=0.0, max_tokens=MAX_TOKENS
    )
    stream = await aclient.completions.create(
        model=model,
        prompt=PROMPT,
        stream=True,
        stream_options={"include_usage": True},
        temperature=0.0,
        max_tokens=MAX_TOKENS,
    )
    pieces, usage = [], None
    async for chunk in stream:
        assert chunk.model == model
        if chunk.choices:
            pieces.append(chunk.choices[0].text)
        if chunk.usage is not None:
            usage = chunk.usage
    assert "".join(pieces) == whole.choices[0].text
    assert usage is not None and whole.usage is not None
    assert usage.completion_tokens == whole.usage.completion_tokens


async def test_async_chat_for_adapter(aclient: openai.AsyncOpenAI) -> None:
    answer = await aclient.chat.completions.create(
        model=A1, messages=MESSAGES, temperature=0.0, max_tokens=MAX_TOKENS
    )
    assert answer.model == A1 and answer.choices[0].message.content


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-adapter", messages=MESSAGES)
    assert caught.value.code == "model_not_found"


async def test_unknown_model_is_not_found_async(aclient: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        await aclient.completions.create(model="/etc/passwd", prompt=PROMPT)


def test_n_2_returns_two_choices(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model=A1, messages=MESSAGES, n=2, temperature=1.0, seed=7, max_tokens=8
    )
    assert sorted(choice.index for choice in answer.choices) == [0, 1]


def test_stop_cuts_the_text(client: openai.OpenAI) -> None:
    full = completion_text(client, A1)
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    assert stop.strip(), f"no usable stop string in {full!r}"
    answer = client.completions.create(
        model=A1, prompt=PROMPT, stop=[stop], temperature=0.0, max_tokens=MAX_TOKENS
    )
    assert answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].text == full[: full.index(stop)]


def test_logprobs_round_trip(client: openai.OpenAI) -> None:
    chat = client.chat.completions.create(
        model=A1,
        messages=MESSAGES,
        logprobs=True,
        top_logprobs=3,
        temperature=0.0,
        max_tokens=MAX_TOKENS,
    )
    content = chat.choices[0].logprobs and chat.choices[0].logprobs.content
    assert content and all(len(token.top_logprobs) == 3 for token in content)
    assert all(token.logprob <= 0 for token in content)
    completion = client.completions.create(
        model=BASE, prompt=PROMPT, logprobs=2, temperature=0.0, max_tokens=MAX_TOKENS
    )
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None and logprobs.top_logprobs and len(logprobs.top_logprobs[0]) == 2


def test_vendor_extensions_pass_through(client: openai.OpenAI) -> None:
    answer = client.completions.create(
        model=A2,
        prompt=PROMPT,
        max_tokens=40,
        temperature=0.0,
        extra_body={"ignore_eos": True, "top_k": 5, "repetition_penalty": 1.05},
    )
    assert answer.usage is not None and answer.usage.completion_tokens == 40


def test_bad_input_is_400_and_engine_4xx_passes_through(
    client: openai.OpenAI, gateway_url: str, vllm_engine: ManagedVLLMEngine
) -> None:
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model=BASE, messages=MESSAGES, extra_body={"temperature": "hot"}
        )
    raw = httpx.post(f"{gateway_url}/v1/chat/completions", content=b'{"model": "tiny", ')
    assert raw.status_code == 400 and raw.json()["error"]["code"] == "invalid_json"
    too_long = {"model": BASE, "prompt": PROMPT, "max_tokens": 4000}
    direct = httpx.post(
        f"{vllm_engine.url}/v1/completions",
        json=too_long,
        headers={"Authorization": f"Bearer {vllm_engine.api_key}"},
        timeout=30,
    )
    via = httpx.post(f"{gateway_url}/v1/completions", json=too_long, timeout=30)
    assert direct.status_code == via.status_code == 400
    assert via.json()["error"]["message"] == direct.json()["error"]["message"]


def test_oversized_body_is_413(client: openai.OpenAI) -> None:
    huge: list[ChatCompletionMessageParam] = [{"role": "user", "content": "x" * (2 << 20)}]
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=BASE, messages=huge)
    assert caught.value.status_code == 413
