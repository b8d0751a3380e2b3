"""Token usage of an engine answer: the one usage parser, and the stream-usage decision.

One parser, one set of bounds: :func:`usage_from` reads a ``usage`` object (OpenAI's
``prompt_tokens`` / ``completion_tokens``, or the ``input_tokens`` / ``output_tokens`` of the
Responses and Anthropic Messages APIs) and refuses absurd counts from a broken engine. Everything
else here finds that object: :func:`usage_of_body` in a non-streamed body, :func:`usage_chunk` in
the final usage chunk of a chat or completion stream, :class:`EventUsage` in the final event of
a Responses or an Anthropic Messages stream. So the same engine output is counted the same,
streamed or not.

The OpenAI proxy (:mod:`gateway.inference.proxy`) calls :func:`ask_for_stream_usage` for each
streamed chat or completion request: when the client did not ask for usage (decided on the
PARSED request by the route, never on the raw bytes, which may spell a key with escapes), the
engine is asked for its final usage chunk anyway, and :class:`StreamUsage` hides that chunk again
so the client sees exactly the events vLLM would have sent it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.errors import InvalidRequestError

# Usage numbers are counted into Prometheus counters: refuse absurd values from a broken engine.
MAX_TOKENS_PER_RESPONSE = 1 << 24

#: (prompt, completion) key pairs, in the order tried: OpenAI completions, Responses/Anthropic.
_COUNT_KEYS = (("prompt_tokens", "completion_tokens"), ("input_tokens", "output_tokens"))


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int


def _valid_count(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value <= MAX_TOKENS_PER_RESPONSE:
            return value
    return None


def usage_from(usage: object) -> Usage | None:
    """THE usage parser: a ``usage`` object's counts, or None when it is missing or absurd.

    A missing completion count is 0 (an embeddings answer); a negative, non-integer or huge
    one makes the whole object untrusted.
    """
    if not isinstance(usage, Mapping):
        return None
    for prompt_key, completion_key in _COUNT_KEYS:
        if prompt_key in usage:
            prompt = _valid_count(usage[prompt_key])
            completion = _valid_count(usage.get(completion_key, 0))
            if prompt is None or completion is None:
                return None
            return Usage(prompt_tokens=prompt, completion_tokens=completion)
    return None


def usage_of_body(body: bytes) -> Usage | None:
    """The usage of a non-streamed answer (its top-level ``usage``), if well-formed."""
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    return usage_from(payload.get("usage")) if isinstance(payload, dict) else None


def event_json(event: bytes) -> Any:
    """The JSON of one SSE event's ``data:`` lines; None for ``[DONE]``, comments or bad JSON."""
    data = b"\n".join(
        line[5:].lstrip(b" ") for line in event.splitlines() if line.startswith(b"data:")
    )
    if not data or data == b"[DONE]":
        return None
    try:
        return json.loads(data)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class UsageChunk:
    usage: Usage
    system_fingerprint: str | None


def usage_chunk(event: bytes) -> UsageChunk | None:
    """The stream's final usage chunk (vLLM sends it with ``"choices": []``); None for any
    other event, so a stream's usage is counted exactly once even when every chunk carries
    usage (``continuous_usage_stats``)."""
    if b'"usage"' not in event:  # the cheap test first: most events are content deltas
        return None
    payload = event_json(event)
    if not isinstance(payload, dict) or payload.get("choices") != []:
        return None
    usage = usage_from(payload.get("usage"))
    if usage is None:
        return None
    fingerprint = payload.get("system_fingerprint")
    return UsageChunk(usage, fingerprint if isinstance(fingerprint, str) else None)


_USAGE_OPTION = b'"stream_options":{"include_usage":true}'
# Any ASCII letter or "_" spelled as an escape: the key may then be "stream_options" in disguise.
_ASCII_ESCAPE = re.compile(rb"\\u00[2-7][0-9a-fA-F]")


def ask_for_stream_usage(body: bytes, *, client_asked: bool) -> tuple[bytes, bool]:
    """The streamed request's JSON to send upstream, and whether to strip the usage chunk.

    ``client_asked`` is ``stream_options.include_usage`` of the PARSED request. A client that
    asked keeps its bytes. Otherwise the engine is asked for usage: when the body cannot hold a
    ``stream_options`` key (no plain spelling, no escaped letter) the option is spliced in after
    the opening brace and every byte of the client's JSON is kept; else the body is parsed and
    written again (compact, duplicate keys resolved the way the parser that validated it did:
    the last one wins). A ``continuous_usage_stats`` the client set is turned off: vLLM ignores it
    without ``include_usage``, so the client would not have had usage in its chunks.
    """
    if client_asked:
        return body, False
    if b'"stream_options"' not in body and _ASCII_ESCAPE.search(body) is None:
        start = body.find(b"{")
        if start < 0:
            raise InvalidRequestError("The request body is not a JSON object.")
        rest = body[start + 1 :]
        separator = b"" if rest.lstrip().startswith(b"}") else b","
        return body[: start + 1] + _USAGE_OPTION + separator + rest, True
    try:
        payload = json.loads(body)
    except ValueError:
        raise InvalidRequestError("The request body is not valid JSON.") from None
    if not isinstance(payload, dict):
        raise InvalidRequestError("The request body is not a JSON object.")
    options = payload.get("stream_options")
    forced = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    if forced.get("continuous_usage_stats"):
        forced["continuous_usage_stats"] = False
    payload["stream_options"] = forced
    return json.dumps(payload, separators=(",", ":")).encode(), True


#: Only the final usage chunk has no choices (vLLM writes compact JSON; both spellings pass).
_NO_CHOICES = (b'"choices":[]', b'"choices": []')
#: A terminal chunk: a choice with a finish reason (``"finish_reason":null`` otherwise).
_TERMINAL = (b'"finish_reason":"', b'"finish_reason": "')
_FINGERPRINT_KEY = b'"system_fingerprint"'


def _stamp(event: bytes, fingerprint: str) -> bytes:
    """``event`` with ``"system_fingerprint"`` added as the last key of its JSON object."""
    end = event.rfind(b"}")
    if end < 0 or _FINGERPRINT_KEY in event:
        return event
    field = b',"system_fingerprint":' + json.dumps(fingerprint).encode()
    return event[:end] + field + event[end:]


class StreamUsage:
    """One stream's usage chunk: found and counted, and hidden again when only the gateway
    asked for it.

    Asked for usage, vLLM also moves ``system_fingerprint`` from the terminal chunks (those with
    a ``finish_reason``) to the usage chunk. So, when stripping, terminal chunks are held back
    until the next event: the usage chunk (vLLM sends it right after them), whose fingerprint
    they get back before they go out, or anything else, before which they go out as they are.
    Content chunks pass straight through; only events holding ``"choices":[]`` are parsed.
    """

    __slots__ = ("_held", "_strip", "usage")

    def __init__(self, *, strip: bool) -> None:
        self.usage: Usage | None = None
        self._strip = strip
        self._held: list[bytes] = []

    def feed(self, event: bytes) -> Sequence[bytes]:
        """The events to send now, in order, for one upstream event."""
        if _NO_CHOICES[0] in event or _NO_CHOICES[1] in event:
            found = usage_chunk(event)
            if found is not None:
                self.usage = found.usage
                if self._strip:
                    held, self._held = self._held, []
                    if found.system_fingerprint is not None:
                        return [_stamp(chunk, found.system_fingerprint) for chunk in held]
                    return held
        if self._strip and (_TERMINAL[0] in event or _TERMINAL[1] in event):
            self._held.append(event)
            return ()
        if self._held:
            held, self._held = self._held, []
            held.append(event)
            return held
        return (event,)

    def finish(self) -> Sequence[bytes]:
        """What is still held when the upstream ended or broke."""
        held, self._held = self._held, []
        return held


class UsageFilter(Protocol):
    """Finds a stream's usage as its events go by (and may hold or hide some of them)."""

    usage: Usage | None

    def feed(self, event: bytes) -> Sequence[bytes]: ...

    def finish(self) -> Sequence[bytes]: ...


#: The Responses API events that end a response; each carries the response with its usage.
_FINAL_RESPONSE_EVENTS = (b'"response.completed"', b'"response.incomplete"', b'"response.failed"')
#: Anthropic's Messages stream: the event after the last content, with the whole usage.
_MESSAGE_DELTA = (b'"message_delta"',)


def _response_usage(payload: dict[str, Any]) -> object:
    response = payload.get("response")
    return response.get("usage") if isinstance(response, dict) else None


def _top_level_usage(payload: dict[str, Any]) -> object:
    return payload.get("usage")


class EventUsage:
    """A stream's usage read from the events that carry it (the last one wins); every event
    passes unchanged. vLLM sends it there whether or not the client asks."""

    __slots__ = ("_marks", "_where", "usage")

    def __init__(self, marks: tuple[bytes, ...], where: Callable[[dict[str, Any]], object]) -> None:
        self.usage: Usage | None = None
        self._marks = marks
        self._where = where

    @classmethod
    def responses(cls) -> EventUsage:
        """The Responses API: ``response.usage`` of its final event."""
        return cls(_FINAL_RESPONSE_EVENTS, _response_usage)

    @classmethod
    def messages(cls) -> EventUsage:
        """Anthropic's Messages API: ``usage`` of its ``message_delta`` event."""
        return cls(_MESSAGE_DELTA, _top_level_usage)

    def feed(self, event: bytes) -> Sequence[bytes]:
        if any(mark in event for mark in self._marks):
            payload = event_json(event)
            if isinstance(payload, dict):
                usage = usage_from(self._where(payload))
                if usage is not None:
                    self.usage = usage
        return (event,)

    def finish(self) -> Sequence[bytes]:
        return ()
