"""Request bodies of the workload, and SSE accounting of streamed answers."""

from __future__ import annotations

import json
import random

import pytest

from loadtest.workload import Api, SseMeter, Workload


def event(payload: object) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def chat_chunk(content: str | None, role: str | None = None) -> bytes:
    delta: dict[str, str] = {}
    if role:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    return event({"choices": [{"index": 0, "delta": delta}]})


STREAM = (
    chat_chunk("", role="assistant")
    + chat_chunk("He")
    + chat_chunk("llo")
    + event({"choices": [], "usage": {"completion_tokens": 2}})
    + b"data: [DONE]\n\n"
)


def test_meter_counts_chunks_tokens_usage_and_gaps() -> None:
    meter = SseMeter(started=0.0)
    for i, piece in enumerate(STREAM.split(b"\n\n")[:-1]):
        meter.feed(piece + b"\n\n", now=1.0 + i)
    assert (meter.chunks, meter.token_chunks, meter.done) == (4, 2, True)
    assert meter.ttft_s == 2.0  # the role chunk carries no token
    assert meter.gaps_s == [1.0]
    assert meter.usage == {"completion_tokens": 2}
    assert meter.error is None


@pytest.mark.parametrize("size", [1, 3, 7, 64])
def test_meter_is_independent_of_how_bytes_are_split(size: int) -> None:
    meter = SseMeter()
    data = STREAM.replace(b"\n", b"\r\n") if size == 7 else STREAM
    for start in range(0, len(data), size):
        meter.feed(data[start : start + size])
    assert (meter.chunks, meter.token_chunks, meter.done) == (4, 2, True)


def test_meter_reports_an_error_event() -> None:
    meter = SseMeter()
    meter.feed(chat_chunk("a") + event({"error": {"message": "engine died", "code": 503}}))
    assert meter.error == "engine died"
    assert not meter.done


def test_completion_text_counts_as_token() -> None:
    meter = SseMeter()
    meter.feed(event({"choices": [{"index": 0, "text": " hi"}]}) + b"data: [DONE]\n\n")
    assert meter.token_chunks == 1


def test_workload_bodies() -> None:
    rng = random.Random(0)
    api, path, body = Workload(
        api=Api.CHAT, prompt_words=5, max_tokens=7, stream=True, ignore_eos=True
    ).request("legal", rng)
    assert (api, path) == (Api.CHAT, "/v1/chat/completions")
    assert body["model"] == "legal" and body["max_tokens"] == 7 and body["ignore_eos"] is True
    assert len(body["messages"][0]["content"].split()) == 5
    assert body["stream_options"] == {"include_usage": True}
    api, path, body = Workload(api=Api.COMPLETION, stream=False).request("m", rng)
    assert path == "/v1/completions" and "prompt" in body and "stream" not in body
    mixed = Workload(api=Api.MIXED, chat_share=0.25)
    apis = [mixed.request("m", rng)[0] for _ in range(4000)]
    assert 800 < apis.count(Api.CHAT) < 1200


@pytest.mark.parametrize(
    "kwargs", [{"prompt_words": 0}, {"max_tokens": 10**6}, {"chat_share": 1.5}]
)
def test_workload_limits(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Workload(**kwargs)  # type: ignore[arg-type]
