"""``/tokenize`` and ``/detokenize`` routed by model like completions, adapters included."""

from __future__ import annotations

from typing import Any

import pytest

from tests.gateway.api.engine_scripts import VLLMScript
from tests.gateway.api.test_openai_routes import assert_openai_error
from tests.gateway.conftest import Gateway
from tests.gateway.openai_env import ADAPTER, BASE


@pytest.fixture
def scripted(gateway: Gateway) -> Gateway:
    gateway.fake.handler = VLLMScript().handle
    return gateway


@pytest.mark.parametrize(
    ("path", "body", "answer"),
    [
        ("/tokenize", {"prompt": "hi"}, {"count": 2, "max_model_len": 2048, "tokens": [104, 105]}),
        ("/detokenize", {"tokens": [104, 105]}, {"prompt": "hi"}),
    ],
)
@pytest.mark.parametrize("model", [BASE, ADAPTER])
async def test_routed_by_model(
    scripted: Gateway, path: str, body: dict[str, Any], answer: dict[str, Any], model: str
) -> None:
    response = await scripted.http.post(path, json={"model": model, **body})
    assert response.status_code == 200, response.text
    assert response.json() == answer
    forwarded = scripted.fake.requests[-1]
    assert forwarded.path == path
    upstream = BASE if model == BASE else scripted.adapter_upstream
    assert forwarded.json() == {"model": upstream, **body}
    assert scripted.leases() == 0


async def test_chat_messages_and_vllm_options_pass_through(scripted: Gateway) -> None:
    body = {
        "model": ADAPTER,
        "messages": [{"role": "user", "content": "hi"}],
        "add_generation_prompt": True,
        "return_token_strs": True,
    }
    response = await scripted.http.post("/tokenize", json=body)
    assert response.status_code == 200, response.text
    assert scripted.fake.requests[-1].json() == {**body, "model": scripted.adapter_upstream}


async def test_no_model_means_the_base_model(scripted: Gateway) -> None:
    """As in vLLM, whose ``model`` is optional here."""
    response = await scripted.http.post("/tokenize", json={"prompt": "hi"})
    assert response.status_code == 200, response.text
    assert scripted.fake.requests[-1].json() == {"prompt": "hi"}


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/tokenize", {"model": "nope", "prompt": "x"}, 404, "model_not_found"),
        ("/detokenize", {"model": "nope", "tokens": [1]}, 404, "model_not_found"),
        ("/tokenize", {"model": BASE}, 400, None),
        ("/tokenize", {"model": BASE, "prompt": "x", "messages": []}, 400, None),
        ("/tokenize", {"model": BASE, "prompt": 7}, 400, None),
        ("/detokenize", {"model": BASE, "tokens": [-1]}, 400, None),
        ("/detokenize", {"model": BASE, "tokens": "12"}, 400, None),
        ("/detokenize", {"model": BASE}, 400, None),
    ],
)
async def test_bad_requests(
    scripted: Gateway, path: str, body: dict[str, Any], status: int, code: str | None
) -> None:
    assert_openai_error(await scripted.http.post(path, json=body), status, code)
    assert scripted.fake.requests == []
