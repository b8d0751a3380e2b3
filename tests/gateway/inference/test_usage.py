"""gateway.inference.usage: the one usage parser (bodies and stream chunks alike), asking the
engine for stream usage, and hiding its usage chunk again.

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
    ask_for_stream_usage,
    usage_chunk,
    usage_from,
    usage_of_body,
)

FIXTURES = Path(__file__).parents[1] / "fixtures"


def parse_usage_event(event: bytes) -> Usage | None:
    found = usage_chunk(event)
    return None if found is None else found.usage


def sse_events(name: str) -> list[bytes]:
    raw = (FIXTURES / name).read_bytes()
    return [event + b"\n\n" for event in raw.split(b"\n\n") if event.strip()]


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


def test_a_real_answer_counts_the_same_streamed_and_not() -> None:
    body = (FIXTURES / "vllm-0.32-chat-nonstream.json").read_bytes()
    (streamed,) = [
        usage
        for event in sse_events("vllm-0.32-chat-stream-usage.sse")
        if (usage := parse_usage_event(event)) is not None
    ]
    assert usage_of_body(body) == streamed == Usage(18, 5)


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        ({"prompt_tokens": 5, "completion_tokens": 16, "total_tokens": 21}, Usage(5, 16)),
        ({"prompt_tokens": 3, "total_tokens": 3}, Usage(3, 0)),  # embeddings: no completion
        ({"input_tokens": 4, "output_tokens": 9, "total_tokens": 13}, Usage(4, 9)),  # responses
        ({"prompt_tokens": 1 << 24, "completion_tokens": 0}, Usage(1 << 24, 0)),
        ({"prompt_tokens": (1 << 24) + 1, "completion_tokens": 0}, None),
        ({"prompt_tokens": 1, "completion_tokens": 1e30}, None),
        ({"prompt_tokens": -1, "completion_tokens": 2}, None),
        ({"prompt_tokens": True, "completion_tokens": 2}, None),
        ({"prompt_tokens": "many", "completion_tokens": 2}, None),
        ({"prompt_tokens": 2.0, "completion_tokens": 2}, None),
        ({"completion_tokens": 2}, None),
        ("lots", None),
        (None, None),
    ],
)
def test_one_parser_one_set_of_bounds_streamed_and_not(usage: object, expected: object) -> None:
    """The same ``usage`` counts the same in a body and in a stream's usage chunk."""
    body = json.dumps({"object": "chat.completion", "choices": [{}], "usage": usage})
    event = "data: " + json.dumps({"object": "chunk", "choices": [], "usage": usage}) + "\n\n"
    assert usage_from(usage) == expected
    assert usage_of_body(body.encode()) == expected
    assert parse_usage_event(event.encode()) == expected


@pytest.mark.parametrize(
    "body",
    [
        b'{"choices":[{"text":"\\"usage\\":{\\"prompt_tokens\\":5}"}],"usage":null}',
        b'{"choices":[]}',
        b"not json",
        b'["usage"]',
    ],
)
def test_bodies_without_usage(body: bytes) -> None:
    assert usage_of_body(body) is None


def test_raw_body_without_options_gets_the_option_spliced_in() -> None:
    raw = b'  {"model": "legal", "stream": true, "messages": [{"role": "user", "content": "{"}]}'
    sent, strip = ask_for_stream_usage(raw, client_asked=False)
    assert strip is True
    assert sent.endswith(raw.split(b"{", 1)[1])  # the client's bytes are kept as they were
    assert json.loads(sent) == {**json.loads(raw), "stream_options": {"include_usage": True}}


def test_a_client_that_asked_keeps_its_bytes() -> None:
    asked = b'{"stream": true, "stream_options": {"include_usage": true}, "model": "m"}'
    assert ask_for_stream_usage(asked, client_asked=True) == (asked, False)


def test_other_stream_options_are_kept_and_continuous_stats_turned_off() -> None:
    other = b'{"stream": true, "stream_options": {"continuous_usage_stats": true}, "model": "m"}'
    sent, strip = ask_for_stream_usage(other, client_asked=False)
    assert strip is True
    # Without include_usage vLLM ignores continuous_usage_stats: the client's chunks carried no
    # usage, so they must not now.
    assert json.loads(sent)["stream_options"] == {
        "continuous_usage_stats": False,
        "include_usage": True,
    }
    assert json.loads(sent)["model"] == "m"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"stream": true, "stream_\\u006fptions": {"include_usage": false}, "model": "m"}',
        b'{"stream": true, "\\u0073tream_options": null, "model": "m"}',
        b'{"stream_options": {"include_usage": false}, "stream_options": null, "stream": true}',
    ],
)
def test_any_spelling_of_the_key_ends_with_usage_asked_for(raw: bytes) -> None:
    sent, strip = ask_for_stream_usage(raw, client_asked=False)
    assert strip is True
    assert b"\\u00" not in sent and sent.count(b'"stream_options"') == 1
    assert json.loads(sent)["stream_options"] == {"include_usage": True}


def test_raw_body_mentioning_stream_options_in_a_string() -> None:
    raw = b'{"stream": true, "prompt": "what are \\"stream_options\\"?"}'
    sent, strip = ask_for_stream_usage(raw, client_asked=False)
    assert strip is True
    assert json.loads(sent)["stream_options"] == {"include_usage": True}
    assert json.loads(sent)["prompt"] == 'what are "stream_options"?'


def test_empty_object_stays_valid_json() -> None:
    sent, _ = ask_for_stream_usage(b"{ }", client_asked=False)
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
