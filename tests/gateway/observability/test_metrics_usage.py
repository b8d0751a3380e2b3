"""gateway.inference.usage: asking the engine for stream usage, and finding its usage chunk.

The ``.sse`` fixtures are raw bytes captured from a real vLLM 0.32 (tiny Llama + a LoRA).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gateway.inference.usage import (
    StreamUsage,
    Usage,
    parse_usage_event,
    prepare_stream_body,
    prepare_stream_bytes,
    usage_from_response,
)

FIXTURES = Path(__file__).parents[1] / "fixtures"


def sse_events(name: str) -> list[bytes]:
    raw = (FIXTURES / name).read_bytes()
    return [event + b"\n\n" for event in raw.split(b"\n\n") if event.strip()]


def test_non_streaming_body_is_untouched() -> None:
    body = {"model": "m", "messages": []}
    assert prepare_stream_body(body) == (body, False)
    assert prepare_stream_body({**body, "stream": False}) == ({**body, "stream": False}, False)


def test_streaming_without_usage_asks_for_it_and_strips() -> None:
    body = {"model": "m", "stream": True}
    sent, strip = prepare_stream_body(body)
    assert strip is True
    assert sent == {"model": "m", "stream": True, "stream_options": {"include_usage": True}}
    assert body == {"model": "m", "stream": True}  # the client's body is not mutated


def test_streaming_keeps_other_stream_options() -> None:
    body = {
        "stream": True,
        "stream_options": {"include_usage": False, "continuous_usage_stats": True},
    }
    sent, strip = prepare_stream_body(body)
    assert strip is True
    # Without include_usage vLLM ignores continuous_usage_stats: the client's chunks carried no
    # usage, so they must not now.
    assert sent["stream_options"] == {"include_usage": True, "continuous_usage_stats": False}


def test_client_that_asked_for_usage_keeps_it() -> None:
    body = {"stream": True, "stream_options": {"include_usage": True}}
    assert prepare_stream_body(body) == (body, False)


def test_malformed_stream_options_are_left_for_the_engine() -> None:
    body = {"stream": True, "stream_options": "yes"}
    assert prepare_stream_body(body) == (body, False)


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        ("vllm-0.32-chat-stream-usage.sse", Usage(18, 5)),
        ("vllm-0.32-completion-stream-usage.sse", Usage(2, 4)),
        # Every chunk carries usage here; only the final choices=[] chunk counts.
        ("vllm-0.32-chat-stream-continuous-usage.sse", Usage(18, 3)),
    ],
)
def test_exactly_the_final_usage_chunk_is_found(fixture: str, expected: Usage) -> None:
    events = sse_events(fixture)
    found = [
        (i, usage)
        for i, event in enumerate(events)
        if (usage := parse_usage_event(event)) is not None
    ]
    assert len(found) == 1
    index, usage = found[0]
    assert usage == expected
    assert events[index + 1].strip() == b"data: [DONE]"  # the chunk right before [DONE]


def test_stream_without_usage_has_no_usage_chunk() -> None:
    assert all(
        parse_usage_event(e) is None for e in sse_events("vllm-0.32-chat-stream-no-usage.sse")
    )


@pytest.mark.parametrize(
    "event",
    [
        b"data: [DONE]\n\n",
        b': keep-alive comment with "usage"\n\n',
        b'data: {"choices": [], "usage": "lots"}\n\n',
        b'data: {"choices": [], "usage": {"prompt_tokens": -1, "completion_tokens": 2}}\n\n',
        b'data: {"choices": [], "usage": {"prompt_tokens": true, "completion_tokens": 2}}\n\n',
        b'data: {"choices": [], "usage": {"prompt_tokens": 1e30, "completion_tokens": 2}}\n\n',
        b'data: {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}',
        b'data: {"error": {"message": "x", "usage": 1}}\n\n',
        b'data: ["usage"]\n\n',
    ],
)
def test_malformed_or_foreign_events_are_not_usage(event: bytes) -> None:
    assert parse_usage_event(event) is None


def test_crlf_and_no_space_after_data() -> None:
    event = b'data:{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}\r\n\r\n'
    assert parse_usage_event(event) == Usage(3, 4)


def test_usage_of_non_streaming_response() -> None:
    payload = json.loads((FIXTURES / "vllm-0.32-chat-nonstream.json").read_bytes())
    assert usage_from_response(payload) == Usage(18, 5)
    assert usage_from_response({"choices": []}) is None
    assert usage_from_response("not an object") is None


def test_raw_body_without_options_gets_the_option_spliced_in() -> None:
    raw = b'  {"model": "legal", "stream": true, "messages": [{"role": "user", "content": "{"}]}'
    sent, strip = prepare_stream_bytes(raw)
    assert strip is True
    assert sent.endswith(raw.split(b"{", 1)[1])  # the client's bytes are kept as they were
    assert json.loads(sent) == {**json.loads(raw), "stream_options": {"include_usage": True}}


def test_raw_body_with_options_is_rewritten_only_when_needed() -> None:
    asked = b'{"stream": true, "stream_options": {"include_usage": true}, "model": "m"}'
    assert prepare_stream_bytes(asked) == (asked, False)
    other = b'{"stream": true, "stream_options": {"continuous_usage_stats": true}, "model": "m"}'
    sent, strip = prepare_stream_bytes(other)
    assert strip is True
    assert json.loads(sent)["stream_options"] == {
        "continuous_usage_stats": False,
        "include_usage": True,
    }
    assert json.loads(sent)["model"] == "m"


def test_raw_body_mentioning_stream_options_in_a_string() -> None:
    raw = b'{"stream": true, "prompt": "what are \\"stream_options\\"?"}'
    sent, strip = prepare_stream_bytes(raw)
    assert strip is True
    assert json.loads(sent)["stream_options"] == {"include_usage": True}
    assert json.loads(sent)["prompt"] == 'what are "stream_options"?'


@pytest.mark.parametrize("raw", [b"not json", b'["stream_options"]', b"[1, 2]"])
def test_raw_body_that_is_not_an_object_is_left_alone(raw: bytes) -> None:
    assert prepare_stream_bytes(raw) == (raw, False)


def test_empty_object_stays_valid_json() -> None:
    sent, _ = prepare_stream_bytes(b"{ }")
    assert json.loads(sent) == {"stream_options": {"include_usage": True}}


def without_ids(event: bytes) -> bytes:
    return re.sub(rb'"id":"[^"]*","object":"([^"]*)","created":\d+', rb'"object":"\1"', event)


def test_stripping_gives_back_the_stream_the_client_asked_for() -> None:
    """vLLM asked for usage moves ``system_fingerprint`` from the terminal chunk to the usage
    chunk: stripping drops the usage chunk and puts the fingerprint back, byte for byte."""
    asked = sse_events("vllm-0.32-chat-stream-usage.sse")
    not_asked = sse_events("vllm-0.32-chat-stream-no-usage.sse")
    usage = StreamUsage(strip=True)
    out = [sent for event in asked for sent in usage.feed(event)] + list(usage.finish())
    assert usage.usage == Usage(18, 5)
    assert len(out) == len(asked) - 1 and out[-1] == b"data: [DONE]\n\n"
    assert out[:-2] == asked[:-3]  # content chunks untouched
    # The terminal chunk now reads as in a stream that never asked for usage.
    assert without_ids(out[-2]) == without_ids(not_asked[-2])
    assert b'"finish_reason":"length"' in out[-2] and b"vllm-0.32.0-" in out[-2]


def test_a_client_that_asked_keeps_every_event() -> None:
    asked = sse_events("vllm-0.32-completion-stream-usage.sse")
    usage = StreamUsage(strip=False)
    out = [sent for event in asked for sent in usage.feed(event)] + list(usage.finish())
    assert out == asked and usage.usage == Usage(2, 4)


def test_held_terminal_chunks_keep_their_order() -> None:
    """With n=2 a choice may finish before the other: its terminal chunk waits only for the
    next event, and goes out unchanged before it."""
    first_done = b'data: {"choices":[{"index":0,"text":"","finish_reason":"length"}]}\n\n'
    second = b'data: {"choices":[{"index":1,"text":"x","finish_reason":null}]}\n\n'
    usage = StreamUsage(strip=True)
    assert list(usage.feed(first_done)) == []
    assert list(usage.feed(second)) == [first_done, second]
    assert list(usage.feed(first_done)) == []
    assert list(usage.finish()) == [first_done]  # the upstream ended without a usage chunk
    assert usage.usage is None
