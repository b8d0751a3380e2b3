"""Token usage of a response, for metrics: the stream-usage decision and usage-chunk detection.

The OpenAI proxy (``gateway.inference.proxy``) calls :func:`prepare_stream_bytes` (on the client's
raw JSON) or :func:`prepare_stream_body` (on a parsed body) for each streaming request before
sending it upstream: it asks the engine for a final usage chunk (``stream_options.include_usage``)
when the client did not, and tells the proxy to strip that chunk again. Every SSE event of the
upstream stream then goes through one :class:`StreamUsage`, which finds the final usage chunk (vLLM
sends it with ``"choices": []``; :func:`parse_usage_event`) so its tokens go on the request's record
(and so into :mod:`gateway.observability.metrics`), and, when stripping, hides it again so the
client sees exactly the events vLLM would have sent it. Non-streaming responses carry ``usage`` in
their body: :func:`usage_from_response`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# Usage numbers are counted into Prometheus counters: refuse absurd values from a broken engine.
MAX_TOKENS_PER_RESPONSE = 1 << 24


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int


def prepare_stream_body(body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Return the body to send upstream and whether to strip the engine's usage chunk.

    Only a streaming request whose client did not ask for usage changes: it gets a copy with
    ``stream_options.include_usage = true`` and ``strip_usage = True``. A
    ``continuous_usage_stats`` the client set is turned off: vLLM ignores it without
    ``include_usage``, so the client would not have had usage in its chunks. A malformed
    ``stream_options`` (not an object) is left alone for the engine to reject.
    """
    if body.get("stream") is not True:
        return body, False
    options = body.get("stream_options")
    if options is None:
        options = {}
    elif not isinstance(options, dict):
        return body, False
    if options.get("include_usage") is True:
        return body, False
    forced = {**options, "include_usage": True}
    if forced.get("continuous_usage_stats"):
        forced["continuous_usage_stats"] = False
    return {**body, "stream_options": forced}, True


_USAGE_OPTION = b'"stream_options":{"include_usage":true}'


def prepare_stream_bytes(body: bytes) -> tuple[bytes, bool]:
    """:func:`prepare_stream_body` for the client's raw JSON; call it for streaming requests only.

    When the body has no ``stream_options`` at all (the common case) the option is spliced in
    after the opening brace and every byte of the client's JSON is kept; otherwise the body is
    parsed and, only if it must change, written again (compact).
    """
    if b'"stream_options"' not in body:
        start = body.find(b"{")
        if start < 0:
            return body, False
        rest = body[start + 1 :]
        separator = b"" if rest.lstrip().startswith(b"}") else b","
        return body[: start + 1] + _USAGE_OPTION + separator + rest, True
    try:
        payload = json.loads(body)
    except ValueError:
        return body, False
    if not isinstance(payload, dict):
        return body, False
    prepared, strip = prepare_stream_body(payload)
    if not strip:
        return body, False
    return json.dumps(prepared, separators=(",", ":")).encode(), True


def _valid_count(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value <= MAX_TOKENS_PER_RESPONSE:
            return value
    return None


def _usage_from(payload: object) -> Usage | None:
    if not isinstance(payload, dict):
        return None
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt = _valid_count(usage.get("prompt_tokens"))
    completion = _valid_count(usage.get("completion_tokens", 0))
    if prompt is None or completion is None:
        return None
    return Usage(prompt_tokens=prompt, completion_tokens=completion)


def usage_from_response(payload: object) -> Usage | None:
    """The ``usage`` of a non-streaming completion / chat completion body, if well-formed."""
    return _usage_from(payload)


def _usage_chunk(event: bytes) -> tuple[Usage, object] | None:
    """(usage, system_fingerprint) of the final usage chunk; ``None`` for any other event."""
    if b'"usage"' not in event:  # the cheap test first: most events are content deltas
        return None
    data = b"\n".join(
        line[5:].lstrip(b" ") for line in event.splitlines() if line.startswith(b"data:")
    )
    if not data or data == b"[DONE]":
        return None
    try:
        payload = json.loads(data)
    except ValueError:
        return None
    if not isinstance(payload, dict) or payload.get("choices") != []:
        return None
    usage = _usage_from(payload)
    return None if usage is None else (usage, payload.get("system_fingerprint"))


def parse_usage_event(event: bytes) -> Usage | None:
    """The usage of the stream's final usage chunk; ``None`` for every other SSE event.

    ``event`` is one whole SSE event (its ``data:`` lines, optionally its blank-line end). Chunks
    with choices (content, or per-chunk ``continuous_usage_stats``) are not the usage chunk and
    answer ``None``, so a stream's usage is counted exactly once.
    """
    found = _usage_chunk(event)
    return None if found is None else found[0]


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
            found = _usage_chunk(event)
            if found is not None:
                self.usage, fingerprint = found
                if self._strip:
                    held, self._held = self._held, []
                    if isinstance(fingerprint, str):
                        return [_stamp(chunk, fingerprint) for chunk in held]
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
