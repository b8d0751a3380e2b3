"""Token usage of a response, for metrics: the stream-usage decision and usage-chunk detection.

The OpenAI proxy (``gateway.proxy``) calls :func:`prepare_stream_bytes` (on the client's raw
JSON) or :func:`prepare_stream_body` (on a parsed body) for each streaming request before sending
it upstream: it asks the engine for a final usage chunk (``stream_options.include_usage``) when
the client did not, and tells the proxy to strip that chunk again. For every SSE event of the
upstream stream the proxy calls :func:`parse_usage_event`; a non-``None`` answer is the final
usage chunk (vLLM sends it with ``"choices": []``): its tokens go on the request's record (and
so into :mod:`gateway.metrics`), and the event is dropped when ``strip_usage`` is set.
Non-streaming responses carry ``usage`` in their body: :func:`usage_from_response`.
"""

from __future__ import annotations

import json
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


def parse_usage_event(event: bytes) -> Usage | None:
    """The usage of the stream's final usage chunk; ``None`` for every other SSE event.

    ``event`` is one whole SSE event (its ``data:`` lines, optionally its blank-line end). Chunks
    with choices (content, or per-chunk ``continuous_usage_stats``) are not the usage chunk and
    answer ``None``, so a stream's usage is counted exactly once.
    """
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
    return _usage_from(payload)
