"""More of the OpenAI surface through the gateway to the session's real vLLM, with the official
SDKs: ``models.retrieve``, ``/tokenize`` and ``/detokenize``, the Responses API (streamed and
not, base and adapter, stored responses, ``previous_response_id``) and, with ``anthropic``,
the Messages API.

The adapter is registered the production way (``--adapters-dir``) and served by the lifecycle
under its versioned name (``NAME@vN.<12 hex>``), so answers retrieved by id, not routed by
model, prove the rename too.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from gateway.engines.managed import ManagedVLLMEngine
from gateway.settings import GatewaySettings
from tests.integration.conftest import TINY_SERVED_NAME
from tests.support.gateway_server import serve_gateway_in_thread

pytestmark = pytest.mark.integration

BASE = TINY_SERVED_NAME
ADAPTER = "surf-a1"
MESSAGES = [{"role": "user", "content": "Tell me a story about a fox."}]
MAX_TOKENS = 16


@pytest.fixture(scope="module")
def gateway_url(
    vllm_engine: ManagedVLLMEngine,
    tiny_adapters: dict[str, Path],
    engine_settings: GatewaySettings,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    settings = engine_settings.model_copy(update={"data_dir": tmp_path_factory.mktemp("gw")})
    adapters = {ADAPTER: tiny_adapters["a1"]}
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


def test_models_retrieve(client: openai.OpenAI) -> None:
    assert client.models.retrieve(BASE).id == BASE
    assert client.models.retrieve(ADAPTER).id == ADAPTER
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("no-such-model")
    assert caught.value.code == "model_not_found"


@pytest.mark.parametrize("model", [BASE, ADAPTER])
def test_tokenize_and_detokenize_round_trip(gateway_url: str, model: str) -> None:
    text = "The quick brown fox"
    with httpx.Client(base_url=gateway_url, timeout=60) as http:
        tokens = http.post(
            "/tokenize", json={"model": model, "prompt": text, "add_special_tokens": False}
        )
        assert tokens.status_code == 200, tokens.text
        ids = tokens.json()["tokens"]
        assert tokens.json()["count"] == len(ids) > 0
        back = http.post("/detokenize", json={"model": model, "tokens": ids})
        assert back.status_code == 200, back.text
        assert back.json()["prompt"] == text
        chat = http.post("/tokenize", json={"model": model, "messages": MESSAGES})
        assert chat.status_code == 200 and chat.json()["count"] > len(ids)


def respond(client: openai.OpenAI, model: str, **extra: object) -> openai.types.responses.Response:
    return client.responses.create(
        model=model, input=MESSAGES, temperature=0.0, max_output_tokens=MAX_TOKENS, **extra
    )


@pytest.mark.parametrize("model", [BASE, ADAPTER])
def test_responses_streamed_equals_non_streamed(client: openai.OpenAI, model: str) -> None:
    answer = respond(client, model)
    assert answer.model == model and answer.output_text
    assert answer.usage is not None and answer.usage.output_tokens > 0
    events = list(respond(client, model, stream=True))
    assert events[-1].type == "response.completed"
    assert events[-1].response.model == model
    streamed = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert streamed == answer.output_text


def test_adapter_answers_differently_from_the_base(client: openai.OpenAI) -> None:
    assert respond(client, BASE).output_text != respond(client, ADAPTER).output_text


def test_stored_response_retrieved_and_continued(client: openai.OpenAI) -> None:
    first = respond(client, ADAPTER, store=True)
    again = client.responses.retrieve(first.id)
    assert again.id == first.id and again.model == ADAPTER
    assert again.output_text == first.output_text
    second = client.responses.create(
        model=ADAPTER,
        input="And then?",
        previous_response_id=first.id,
        temperature=0.0,
        max_output_tokens=MAX_TOKENS,
    )
    assert second.id != first.id and second.output_text
    # The second turn saw the first: more input tokens than its own message alone.
    alone = client.responses.create(
        model=ADAPTER, input="And then?", temperature=0.0, max_output_tokens=MAX_TOKENS
    )
    assert second.usage is not None and alone.usage is not None
    assert second.usage.input_tokens > alone.usage.input_tokens


def test_unknown_response_is_a_clear_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.retrieve("resp_0000000000_" + "0" * 32)
    assert caught.value.code == "response_not_found"


@pytest.mark.parametrize("model", [BASE, ADAPTER])
def test_anthropic_messages_streamed_equals_non_streamed(gateway_url: str, model: str) -> None:
    with anthropic.Anthropic(base_url=gateway_url, api_key="unused", max_retries=0) as sdk:
        # This SDK has no temperature parameter any more; vLLM still takes one.
        greedy = {"temperature": 0.0}
        message = sdk.messages.create(
            model=model, max_tokens=MAX_TOKENS, messages=MESSAGES, extra_body=greedy
        )
        assert message.model == model and message.usage.output_tokens > 0
        text = "".join(block.text for block in message.content if block.type == "text")
        assert text
        with sdk.messages.stream(
            model=model, max_tokens=MAX_TOKENS, messages=MESSAGES, extra_body=greedy
        ) as stream:
            streamed = "".join(stream.text_stream)
            final = stream.get_final_message()
        assert streamed == text and final.model == model
        with pytest.raises(anthropic.NotFoundError):
            sdk.messages.create(model="no-such-model", max_tokens=4, messages=MESSAGES)
