"""The FAKE vLLM answers like an OpenAI server: checked with the official SDK and raw HTTP."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from loadtest.fake_vllm import (
    MAX_BODY_BYTES,
    FakeBehaviour,
    FakeVLLM,
    Recorded,
    Reply,
    Stream,
    chunk_event,
    serving,
    start_server,
)
from loadtest.procs import Service


@pytest.fixture
def client(fake_vllm: Service) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake_vllm.url + "/v1", api_key="unused", max_retries=0)


FAKE_MODEL = "fake-base"  # what conftest's fake_vllm serves
FAKE_CHUNKS = 5


@pytest.fixture(autouse=True)
def _same_as_conftest(fake_model: str, fake_chunks: int) -> None:
    assert (fake_model, fake_chunks) == (FAKE_MODEL, FAKE_CHUNKS)


def expected_text(tokens: int) -> str:
    return "".join(f" w{i}" for i in range(tokens))


def test_models_lists_the_base(client: openai.OpenAI) -> None:
    ids = [model.id for model in client.models.list()]
    assert ids[0] == FAKE_MODEL


def test_chat_full_answer_and_usage(client: openai.OpenAI) -> None:
    answer = client.chat.completions.create(
        model=FAKE_MODEL, messages=[{"role": "user", "content": "three words here"}]
    )
    assert answer.choices[0].message.content == expected_text(FAKE_CHUNKS)
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (3, FAKE_CHUNKS)


def test_chat_stream_chunk_count_with_usage(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="any-adapter",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    # role chunk + one chunk per token + the usage chunk, like vLLM
    assert len(chunks) == 1 + FAKE_CHUNKS + 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected_text(FAKE_CHUNKS)
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == FAKE_CHUNKS
    assert {c.model for c in chunks} == {"any-adapter"}


def test_completion_stream_honours_max_tokens(client: openai.OpenAI) -> None:
    chunks = list(
        client.completions.create(model=FAKE_MODEL, prompt="a b", max_tokens=2, stream=True)
    )
    assert [c.choices[0].text for c in chunks] == [" w0", " w1"]
    assert chunks[-1].choices[0].finish_reason == "length"


def test_completion_full(client: openai.OpenAI) -> None:
    answer = client.completions.create(model=FAKE_MODEL, prompt="x", max_tokens=3)
    assert answer.choices[0].text == expected_text(3)


def test_bad_requests_get_openai_errors(client: openai.OpenAI, fake_vllm: Service) -> None:
    with pytest.raises(openai.BadRequestError) as excinfo:
        client.chat.completions.create(model=FAKE_MODEL, messages=[])
    assert excinfo.value.status_code == 400
    response = httpx.post(fake_vllm.url + "/v1/completions", content=b"{not json")
    assert response.status_code == 400
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    response = httpx.post(fake_vllm.url + "/v1/completions", content=b"x" * (MAX_BODY_BYTES + 1))
    assert response.status_code == 413
    assert httpx.get(fake_vllm.url + "/v1/nowhere").status_code == 404
    assert httpx.get(fake_vllm.url + "/v1/completions").status_code == 405


def test_lora_load_unload_like_vllm(fake_vllm: Service, client: openai.OpenAI) -> None:
    url = fake_vllm.url
    body = {"lora_name": "legal", "lora_path": "/anywhere/legal"}
    assert httpx.post(url + "/v1/load_lora_adapter", json=body).status_code == 200
    again = httpx.post(url + "/v1/load_lora_adapter", json=body)
    assert again.status_code == 400 and "already been loaded" in again.text
    models = {m.id: m for m in client.models.list()}
    assert models["legal"].model_extra is not None
    assert models["legal"].model_extra["parent"] == FAKE_MODEL
    assert (
        httpx.post(url + "/v1/unload_lora_adapter", json={"lora_name": "legal"}).status_code == 200
    )
    assert (
        httpx.post(url + "/v1/unload_lora_adapter", json={"lora_name": "legal"}).status_code == 404
    )


def test_metrics_are_vllm_like_and_count_chunks(fake_vllm: Service, client: openai.OpenAI) -> None:
    before = httpx.get(fake_vllm.url + "/fake/stats").json()
    list(
        client.chat.completions.create(
            model=FAKE_MODEL, messages=[{"role": "user", "content": "x"}], stream=True
        )
    )
    after = httpx.get(fake_vllm.url + "/fake/stats").json()
    assert after["stream_chunks_total"] - before["stream_chunks_total"] == 1 + FAKE_CHUNKS
    text = httpx.get(fake_vllm.url + "/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert "vllm:num_requests_running" in families
    success = families["vllm:request_success"].samples[0]
    assert success.value == after["completions_total"]
    assert families["fake_vllm_stream_chunks"].samples[0].value == after["stream_chunks_total"]


def test_health(fake_vllm: Service) -> None:
    assert httpx.get(fake_vllm.url + "/health").status_code == 200


async def test_pipelined_requests_are_answered_in_order() -> None:
    """Two requests in one TCP write (HTTP/1.1 pipelining), the first delayed: answers keep
    the request order."""
    server, _, port = await start_server(FakeBehaviour(chunks=2, delay_ms=5.0))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        first = json.dumps({"model": "m", "prompt": "a", "max_tokens": 1}).encode()
        writer.write(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
            % (len(first), first)
            + b"GET /health HTTP/1.1\r\nHost: x\r\n"
            b"Connection: close\r\n\r\n"
        )
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout=10)
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
    answers = raw.split(b"HTTP/1.1 ")[1:]
    assert len(answers) == 2
    assert answers[0].startswith(b"200") and b'"text":" w0"' in answers[0]
    assert answers[1].startswith(b"200") and b"Connection: close" in answers[1]


async def test_a_slow_load_completes_when_its_caller_gives_up() -> None:
    """Like vLLM: a client that hangs up during a load does not undo it (lifecycle tests rely
    on this to reproduce hang-ups during cold loads)."""
    fake = FakeVLLM()
    fake.load_delay_s = 0.2
    async with httpx.AsyncClient(base_url="http://fake", transport=fake.transport()) as http:
        body = {"lora_name": "legal", "lora_path": "/adapters/legal"}
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await http.post("/v1/load_lora_adapter", json=body)
        assert fake.loaded == {}
        await asyncio.sleep(0.3)
        assert fake.loaded == {"legal": "/adapters/legal"} and fake.count("load") == 1


async def test_faults_on_a_socket_scripted_stream_breaks_and_unhealthy() -> None:
    fake = FakeVLLM(FakeBehaviour(record_requests=True))

    async def broken(request: Recorded) -> Reply | None:
        if request.path == "/v1/chat/completions":
            return Stream([chunk_event("m", "x")], fail_at_end=True)
        return None

    fake.handler = broken
    async with serving(fake) as url, httpx.AsyncClient(base_url=url) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.post("/v1/chat/completions", json={"model": "m"}, headers={"x-k": "v"})
        assert fake.requests[-1].headers["x-k"] == "v"
        fake.unhealthy = True
        assert (await http.get("/health")).status_code == 503
        fake.reset()
        assert (await http.get("/health")).status_code == 200


async def test_metrics_name_only_adapters_with_a_request_running() -> None:
    """Like vLLM's ``lora_requests_info``: a loaded adapter is not "running" while idle."""
    fake = FakeVLLM(FakeBehaviour(delay_ms=400))
    fake.loaded["legal"] = "/adapters/legal"
    async with serving(fake) as url, httpx.AsyncClient(base_url=url) as http:

        async def running_adapters() -> str:
            text = (await http.get("/metrics")).text
            (info,) = [f for f in text_string_to_metric_families(text) if f.name.endswith("info")]
            return str(info.samples[0].labels["running_lora_adapters"])

        assert await running_adapters() == ""
        body = {"model": "legal", "prompt": "a", "max_tokens": 1}
        answer = asyncio.create_task(http.post("/v1/completions", json=body))
        async with asyncio.timeout(5):
            while fake.running == 0:  # noqa: ASYNC110 (the fake has no event for this)
                await asyncio.sleep(0.01)
        async with httpx.AsyncClient(base_url=url) as other:  # its own connection
            text = (await other.get("/metrics")).text
        assert 'running_lora_adapters="legal"' in text
        assert (await answer).status_code == 200
        assert await running_adapters() == ""
