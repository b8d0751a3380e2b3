"""The OpenAI routes in front of a fake upstream: validation, forwarding, renaming, errors."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import openai
import pytest

from gateway.engines.base import EngineState
from loadtest.fake_vllm import Recorded, Reply, completion_body, json_reply
from tests.gateway.conftest import Gateway, GatewayFactory
from tests.gateway.openai_env import (
    ADAPTER,
    BASE,
    access_lines,
    chat,
    completion,
)
from tests.support.gateway_server import unused_url


def assert_openai_error(
    response: httpx.Response, status: int, code: object = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code
    return error


async def test_models_lists_base_and_adapters_with_lineage(gateway: Gateway) -> None:
    response = await gateway.http.get("/v1/models")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    by_id = {model["id"]: model for model in body["data"]}
    assert set(by_id) == {BASE, ADAPTER}
    assert by_id[BASE]["parent"] is None and by_id[BASE]["object"] == "model"
    assert by_id[ADAPTER]["parent"] == BASE
    assert by_id[ADAPTER]["root"] == ADAPTER  # the public name, never the versioned one


async def test_base_request_is_forwarded_byte_for_byte(gateway: Gateway) -> None:
    raw = (
        b'{ "messages" : [{"role":"user","content":"caf\\u00e9 \xe2\x9c\x93"}],\n "model":"%s",'
        b' "temperature": 0.0, "top_k": 3, "min_p": 0.1, "ignore_eos": true}' % BASE.encode()
    )
    response = await gateway.http.post("/v1/chat/completions", content=raw)
    assert response.status_code == 200, response.text
    assert gateway.fake.requests[-1].body == raw
    assert gateway.fake.requests[-1].path == "/v1/chat/completions"


async def test_adapter_request_replaces_only_the_model(gateway: Gateway) -> None:
    raw = (
        b'{"messages": [{"role": "user", "content": "say \\"model\\": \\"style\\""}],'
        b' "model" :  "style", "repetition_penalty": 1.1, "stop": ["\\n"]}'
    )
    response = await gateway.http.post("/v1/chat/completions", content=raw)
    assert response.status_code == 200, response.text
    forwarded = gateway.fake.requests[-1].body
    assert forwarded == raw.replace(
        b'"style", "rep', b'"%s", "rep' % gateway.adapter_upstream.encode()
    )
    # The engine answers with its own name for the adapter; the client sees the public one.
    assert response.json()["model"] == ADAPTER


async def test_completions_route_forwards_to_completions(gateway: Gateway) -> None:
    response = await gateway.http.post("/v1/completions", json=completion(ADAPTER, echo=True))
    assert response.status_code == 200
    recorded = gateway.fake.requests[-1]
    assert recorded.path == "/v1/completions"
    assert recorded.json() == completion(gateway.adapter_upstream, echo=True)


async def test_unknown_model_is_404_model_not_found_for_the_sdk(gateway: Gateway) -> None:
    client = openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.NotFoundError) as caught:
        await client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}]
        )
    await client.close()
    assert caught.value.status_code == 404
    assert caught.value.code == "model_not_found"
    assert gateway.fake.requests == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (chat(temperature="hot"), "temperature"),
        (chat(temperature=3.0), "temperature"),
        (chat(n=17), "n"),
        (chat(max_tokens=0), "max_tokens"),
        (chat(stop=[str(i) for i in range(17)]), "stop"),
        (chat(top_logprobs=21), "top_logprobs"),
        (chat(stream="sometimes"), "stream"),
        ({"model": BASE, "messages": []}, "messages"),
        ({"model": BASE, "messages": "hello"}, "messages"),
        ({"model": BASE, "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": 7, "messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "", "messages": [{"role": "user", "content": "x"}]}, "model"),
    ],
)
async def test_chat_validation_errors_are_400(
    gateway: Gateway, body: dict[str, Any], param: str
) -> None:
    response = await gateway.http.post("/v1/chat/completions", json=body)
    error = assert_openai_error(response, 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert gateway.fake.requests == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (completion(logprobs=21), "logprobs"),
        (completion(best_of=0), "best_of"),
        ({"model": BASE, "prompt": []}, "prompt"),
        ({"model": BASE, "prompt": [[1, -2]]}, "prompt"),
        ({"model": BASE}, "prompt"),
    ],
)
async def test_completion_validation_errors_are_400(
    gateway: Gateway, body: dict[str, Any], param: str
) -> None:
    response = await gateway.http.post("/v1/completions", json=body)
    error = assert_openai_error(response, 400)
    assert error["param"] is not None and error["param"].startswith(param)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "base-model", "messages": [',
        b"",
        b"  ",
        b"\xff\xfe",
        b"[1, 2]",
        b'"a string"',
        b"null",
    ],
)
async def test_malformed_bodies_are_400(gateway: Gateway, raw: bytes) -> None:
    response = await gateway.http.post(
        "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
    )
    assert_openai_error(response, 400)


async def test_engine_4xx_is_passed_through_with_its_message(gateway: Gateway) -> None:
    message = "This model's maximum context length is 2048 tokens."

    async def refuse(recorded: Recorded) -> Reply:
        return json_reply(
            {"error": {"message": message, "type": "BadRequestError", "param": None, "code": 400}},
            400,
        )

    gateway.fake.handler = refuse
    response = await gateway.http.post("/v1/chat/completions", json=chat(max_tokens=99999))
    error = assert_openai_error(response, 400)
    assert error["message"] == message
    streamed = await gateway.http.post("/v1/chat/completions", json=chat(stream=True))
    assert assert_openai_error(streamed, 400)["message"] == message


async def test_engine_errors_name_the_adapter_not_its_versioned_name(gateway: Gateway) -> None:
    async def refuse(recorded: Recorded) -> Reply:
        message = f"The model `{gateway.adapter_upstream}` cannot take this request."
        return json_reply(
            {"error": {"message": message, "type": "BadRequestError", "param": None, "code": 400}},
            400,
        )

    gateway.fake.handler = refuse
    for body in (chat(ADAPTER), chat(ADAPTER, stream=True)):
        response = await gateway.http.post("/v1/chat/completions", json=body)
        error = assert_openai_error(response, 400)
        assert error["message"] == f"The model `{ADAPTER}` cannot take this request."
        assert gateway.adapter_upstream not in response.text


async def test_unreachable_engine_is_503_with_retry_after(make_gateway: GatewayFactory) -> None:
    async with make_gateway() as gw:
        gw.engine._url = unused_url()
        await gw.engine.close_client()
        for body in (chat(), chat(stream=True), chat(ADAPTER)):
            response = await gw.http.post("/v1/chat/completions", json=body)
            error = assert_openai_error(response, 503, "engine_unavailable")
            assert int(response.headers["retry-after"]) > 0
            assert "unreachable" in error["message"]
            # The engine's address is internal: logged, never shown to clients.
            assert gw.engine.url.removeprefix("http://") not in response.text


async def test_engine_down_is_503_then_recovers(gateway: Gateway) -> None:
    gateway.engine.state = EngineState.DOWN
    gateway.engine.reason = "restarting after exit code -9"
    response = await gateway.http.post("/v1/chat/completions", json=chat())
    error = assert_openai_error(response, 503, "engine_unavailable")
    # The state is public; the engine's own reason (exit codes, pids) is logged, not shown.
    assert "down" in error["message"] and "exit code" not in error["message"]
    assert "retry-after" in response.headers
    gateway.engine.state = EngineState.READY
    response = await gateway.http.post("/v1/chat/completions", json=chat())
    assert response.status_code == 200


async def test_upstream_timeout_is_504(make_gateway: GatewayFactory) -> None:
    async with make_gateway(read_timeout_s=0.2) as gw:

        async def stall(recorded: Recorded) -> Reply:
            await asyncio.sleep(0.6)
            return json_reply(completion_body(BASE))

        gw.fake.handler = stall
        response = await gw.http.post("/v1/chat/completions", json=chat())
        assert_openai_error(response, 504, "upstream_timeout")


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/v1/nothing-here", 404, "not_found"),
        ("POST", "/v1/embeddings", 404, "not_found"),
        ("GET", "/", 404, "not_found"),
        ("POST", "/v1/chat/completions/", 404, "not_found"),  # no redirect to elsewhere
        ("GET", "/admin/nothing-here", 404, "not_found"),
        ("GET", "/v1/chat/completions", 405, "method_not_allowed"),
        ("DELETE", "/v1/models", 405, "method_not_allowed"),
        ("PUT", "/v1/completions", 405, "method_not_allowed"),
    ],
)
async def test_unknown_path_and_wrong_method_use_the_openai_shape(
    gateway: Gateway, method: str, path: str, status: int, code: str
) -> None:
    response = await gateway.http.request(method, path, json={})
    error = assert_openai_error(response, status, code)
    assert error["type"] == "invalid_request_error"
    # Like OpenAI's own answer: the message names what was asked for.
    assert f"{method} {path}" in error["message"]
    if status == 405:
        assert response.headers["allow"]


async def test_sdk_retrieves_a_model_and_gets_model_not_found_for_an_unknown_one(
    gateway: Gateway,
) -> None:
    client = openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0)
    try:
        base = await client.models.retrieve(BASE)
        adapter = await client.models.retrieve(ADAPTER)
        with pytest.raises(openai.NotFoundError) as caught:
            await client.models.retrieve("no-such-model")
    finally:
        await client.close()
    assert base.id == BASE and adapter.id == ADAPTER
    listed = {m["id"]: m for m in (await gateway.http.get("/v1/models")).json()["data"]}
    for name in (BASE, ADAPTER):
        assert (await gateway.http.get(f"/v1/models/{name}")).json() == listed[name]
    assert caught.value.status_code == 404 and caught.value.code == "model_not_found"
    assert "no-such-model" in caught.value.message


async def test_a_model_id_with_a_slash_is_retrieved(make_gateway: GatewayFactory) -> None:
    """A base model is often served under its Hub id (``org/name``)."""
    async with make_gateway() as gw:
        gw.engine.base_model = "org/base-model"
        response = await gw.http.get("/v1/models/org/base-model")
        assert response.status_code == 200, response.text
        assert response.json()["id"] == "org/base-model"
        assert_openai_error(await gw.http.get("/v1/models/org/other"), 404, "model_not_found")


async def test_non_stream_usage_is_logged(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO", logger="gateway.access"):
        response = await gateway.http.post("/v1/chat/completions", json=chat(ADAPTER))
        (line,) = await access_lines(caplog, response.headers["x-request-id"])
    assert response.status_code == 200
    assert line["model"] == ADAPTER and line["adapter"] == ADAPTER
    assert line["prompt_tokens"] == 1 and line["completion_tokens"] == 2  # the fake counts words
    assert line["status"] == 200 and line["stream"] is False


async def test_client_leaving_a_non_stream_request_cancels_it_upstream(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    upstream_saw_disconnect = asyncio.Event()

    async def slow(recorded: Recorded) -> Reply:
        try:
            await asyncio.wait_for(recorded.disconnected.wait(), timeout=5)
            upstream_saw_disconnect.set()
        except TimeoutError:
            pass
        return json_reply(completion_body(gateway.adapter_upstream))

    gateway.fake.handler = slow
    with caplog.at_level("INFO", logger="gateway.access"):
        with pytest.raises(httpx.ReadTimeout):
            await gateway.http.post(
                "/v1/chat/completions",
                json=chat(ADAPTER),
                headers={"x-request-id": "impatient"},
                timeout=0.3,
            )
        await asyncio.wait_for(upstream_saw_disconnect.wait(), timeout=3)
        (line,) = await access_lines(caplog, "impatient")
    assert line["status"] == 499 and line["client_disconnected"] is True
    assert gateway.leases() == 0
