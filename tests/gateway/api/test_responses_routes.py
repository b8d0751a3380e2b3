"""The Responses API through the gateway, driven by the official ``openai`` SDK.

The engine is the FAKE vLLM answering through :class:`~tests.gateway.api.engine_scripts.VLLMScript`,
which keeps stored responses in its own memory, as vLLM does; the conversation test runs two
engines behind two gateway replicas.
"""

from __future__ import annotations

import asyncio
import re
from contextlib import AsyncExitStack
from pathlib import Path

import openai
import pytest

from gateway.app import create_app
from gateway.settings import GatewaySettings
from loadtest.fake_vllm import FakeBehaviour, FakeVLLM, serving
from loadtest.fake_vllm.engine import Recorded, Reply, Stream
from tests.adapters.builders import write_base_model
from tests.gateway.api.engine_scripts import VLLMScript, response_body, sse
from tests.gateway.api.test_openai_routes import assert_openai_error
from tests.gateway.conftest import Gateway
from tests.gateway.openai_env import ADAPTER, BASE, access_lines
from tests.support.gateway_server import StaticEngine, serve_in_loop

OUR_ID = re.compile(r"resp_[0-9a-f]{10}_[0-9a-f]{32}")


@pytest.fixture
def script(gateway: Gateway) -> VLLMScript:
    script = VLLMScript()
    gateway.fake.handler = script.handle
    return script


def sdk(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)


@pytest.mark.parametrize("model", [BASE, ADAPTER])
async def test_create_routes_renames_and_counts(
    gateway: Gateway, script: VLLMScript, caplog: pytest.LogCaptureFixture, model: str
) -> None:
    upstream = BASE if model == BASE else gateway.adapter_upstream
    client = sdk(gateway.url)
    with caplog.at_level("INFO", logger="gateway.access"):
        response = await client.responses.with_raw_response.create(model=model, input="hi")
        (line,) = await access_lines(caplog, response.headers["x-request-id"])
    await client.close()
    parsed = response.parse()
    assert parsed.output_text == "fake answer" and parsed.model == model
    forwarded = gateway.fake.requests[-1].json()
    assert forwarded["model"] == upstream
    # The id the engine used (and the client sees) names the engine.
    assert parsed.id == forwarded["request_id"] and OUR_ID.fullmatch(parsed.id)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (7, 2)
    assert line["model"] == model


async def test_stream_renames_every_event_and_counts_usage(
    gateway: Gateway, script: VLLMScript, caplog: pytest.LogCaptureFixture
) -> None:
    client = sdk(gateway.url)
    with caplog.at_level("INFO", logger="gateway.access"):
        stream = await client.responses.create(
            model=ADAPTER, input="hi", stream=True, extra_headers={"x-request-id": "rstream"}
        )
        events = [event async for event in stream]
        (line,) = await access_lines(caplog, "rstream")
    await client.close()
    kinds = [event.type for event in events]
    assert kinds == [
        "response.created",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.completed",
    ]
    assert events[0].response.model == ADAPTER and events[-1].response.model == ADAPTER
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == (
        "fake answer"
    )
    assert (line["prompt_tokens"], line["completion_tokens"]) == (7, 2)
    assert line["stream"] is True


async def test_retrieve_and_continue_on_the_engine_that_stored_it(
    gateway: Gateway, script: VLLMScript
) -> None:
    client = sdk(gateway.url)
    try:
        first = await client.responses.create(model=ADAPTER, input="hi")
        again = await client.responses.retrieve(first.id)
        # Retrieved by id, not routed by model: the version's name is still the public one.
        assert again.id == first.id and again.model == ADAPTER
        assert script.stored[first.id]["model"] == gateway.adapter_upstream
        second = await client.responses.create(
            model=ADAPTER, input="more", previous_response_id=first.id
        )
        assert second.id != first.id
        assert gateway.fake.requests[-1].json()["previous_response_id"] == first.id
    finally:
        await client.close()


@pytest.mark.parametrize(
    "response_id",
    [
        "resp_0000000000_" + "0" * 32,  # well-formed, but no engine of ours has that tag
        "resp_abc",  # not an id this gateway gave out
        "x" * 128,
    ],
)
async def test_an_id_no_engine_of_ours_made_is_a_clear_404(
    gateway: Gateway, script: VLLMScript, response_id: str
) -> None:
    error = assert_openai_error(
        await gateway.http.get(f"/v1/responses/{response_id}"), 404, "response_not_found"
    )
    assert error["param"] == "response_id"
    continued = await gateway.http.post(
        "/v1/responses",
        json={"model": BASE, "input": "hi", "previous_response_id": response_id},
    )
    assert assert_openai_error(continued, 404, "response_not_found")["param"] == (
        "previous_response_id"
    )
    assert_openai_error(await gateway.http.post(f"/v1/responses/{response_id}/cancel"), 404)
    assert gateway.fake.requests == []


async def test_cancel_passes_the_engine_s_answer_and_delete_says_it_cannot(
    gateway: Gateway, script: VLLMScript
) -> None:
    client = sdk(gateway.url)
    first = await client.responses.create(model=BASE, input="hi")
    with pytest.raises(openai.BadRequestError) as refused:
        await client.responses.cancel(first.id)
    assert "synchronous" in refused.value.message
    with pytest.raises(openai.APIStatusError) as caught:
        await client.responses.delete(first.id)
    assert caught.value.status_code == 501 and "restarts" in caught.value.message
    await client.close()


@pytest.mark.parametrize(
    "body",
    [
        {"input": "hi"},
        {"model": BASE, "input": "hi", "temperature": 3},
        {"model": BASE, "input": "hi", "previous_response_id": "r" * 129},
        {"model": BASE, "input": "hi", "max_output_tokens": 0},
        {"model": BASE, "input": 7},
    ],
)
async def test_bad_bodies_are_400(
    gateway: Gateway, script: VLLMScript, body: dict[str, object]
) -> None:
    assert_openai_error(await gateway.http.post("/v1/responses", json=body), 400)
    assert gateway.fake.requests == []


async def test_unknown_model_is_404(gateway: Gateway, script: VLLMScript) -> None:
    response = await gateway.http.post("/v1/responses", json={"model": "nope", "input": "hi"})
    assert_openai_error(response, 404, "model_not_found")


async def test_a_client_leaving_mid_stream_aborts_the_engine_request(gateway: Gateway) -> None:
    never = asyncio.Event()

    async def endless(recorded: Recorded) -> Reply:
        body = recorded.json()
        started = response_body(body["request_id"], body["model"], "")
        return Stream([sse("response.created", {"response": started}), never])

    gateway.fake.handler = endless
    async with gateway.http.stream(
        "POST", "/v1/responses", json={"model": ADAPTER, "input": "hi", "stream": True}
    ) as response:
        async for chunk in response.aiter_raw():
            assert b"response.created" in chunk
            break
    await asyncio.wait_for(gateway.fake.requests[-1].disconnected.wait(), timeout=5)
    assert gateway.leases() == 0


async def test_a_conversation_across_two_engines_and_two_replicas(tmp_path: Path) -> None:
    """Each turn reaches either gateway replica; each continues the previous turn, which only
    the engine that made it holds."""
    fakes = [FakeVLLM(FakeBehaviour(model=BASE, record_requests=True)) for _ in range(2)]
    scripts = [VLLMScript() for _ in fakes]
    for fake, script in zip(fakes, scripts, strict=True):
        fake.handler = script.handle
    base_dir = write_base_model(tmp_path / "models" / BASE)
    async with AsyncExitStack() as stack:
        urls = [await stack.enter_async_context(serving(f)) for f in fakes]
        replicas = []
        for index in range(2):
            engines = [StaticEngine(url, BASE, name=f"remote-{i}") for i, url in enumerate(urls)]
            for engine in engines:
                stack.push_async_callback(engine.close_client)
            settings = GatewaySettings(
                data_dir=tmp_path / f"replica-{index}", base_model=str(base_dir)
            )
            app = create_app(settings, engines=engines)
            replicas.append(await stack.enter_async_context(serve_in_loop(app)))
        clients = [sdk(url) for url in replicas]
        previous: str | None = None
        made_by: list[int] = []
        for turn in range(5):
            client = clients[(turn * 7 + 1) % 3 % 2]  # not a plain alternation
            answer = await client.responses.create(
                model=BASE, input=f"turn {turn}", previous_response_id=previous
            )
            made_by.append(next(i for i, s in enumerate(scripts) if answer.id in s.stored))
            previous = answer.id
        for client in clients:
            await client.close()
    # The first turn went where round-robin sent it; every later one followed it there.
    assert len(set(made_by)) == 1
    responses = [r for f in fakes for r in f.requests if r.path == "/v1/responses"]
    assert len(responses) == 5


async def test_responses_defaults_use_max_output_tokens(
    gateway: Gateway, script: VLLMScript
) -> None:
    await gateway.lifecycle.set_sampling_defaults(ADAPTER, {"temperature": 0.3, "max_tokens": 9})
    try:
        response = await gateway.http.post("/v1/responses", json={"model": ADAPTER, "input": "x"})
        assert response.status_code == 200, response.text
        forwarded = gateway.fake.requests[-1].json()
        assert forwarded["temperature"] == 0.3 and forwarded["max_output_tokens"] == 9
        assert "max_tokens" not in forwarded
    finally:
        await gateway.lifecycle.set_sampling_defaults(ADAPTER, None)
