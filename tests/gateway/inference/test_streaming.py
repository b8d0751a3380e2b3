"""SSE pass-through: event splitting, one event in = one event out, no buffering, broken
upstreams, client disconnects and the adapter lease."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import pytest

from gateway.errors import EngineError, EngineUnavailableError
from gateway.inference.streaming import MAX_EVENT_BYTES, SSEEventSplitter, SSEProxyResponse
from loadtest.fake_vllm import DONE, Recorded, Reply, Stream, chunk_event, usage_event
from tests.gateway.conftest import Gateway
from tests.gateway.openai_env import ADAPTER, BASE, access_lines, chat

EVENTS = [chunk_event(BASE, text) for text in ("Hel", "lo", " wor", "ld", "!")] + [DONE]


def cuts(data: bytes, sizes: list[int]) -> list[bytes]:
    """``data`` cut into pieces of the given sizes (the rest is the last piece)."""
    pieces, at = [], 0
    for size in sizes:
        pieces.append(data[at : at + size])
        at += size
    pieces.append(data[at:])
    return [piece for piece in pieces if piece]


def split_events(body: bytes) -> list[bytes]:
    return [part + b"\n\n" for part in body.split(b"\n\n") if part]


@pytest.mark.parametrize("sizes", [[], [1] * 40, [3, 500, 7], [len(EVENTS[0]) + 5, 2]])
def test_splitter_finds_every_event_whatever_the_cuts(sizes: list[int]) -> None:
    splitter = SSEEventSplitter()
    found: list[bytes] = []
    for piece in cuts(b"".join(EVENTS), sizes):
        found.extend(splitter.feed(piece))
    assert found == EVENTS
    assert splitter.flush() == b""


def test_splitter_keeps_an_unterminated_tail_and_bounds_it() -> None:
    splitter = SSEEventSplitter()
    assert splitter.feed(b"data: 1\n\ndata: par") == [b"data: 1\n\n"]
    assert splitter.flush() == b"data: par"
    with pytest.raises(EngineError):
        splitter.feed(b"x" * (MAX_EVENT_BYTES + 1))


class AsgiCapture:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.disconnect = asyncio.Event()

    async def send(self, message: Any) -> None:
        self.messages.append(message)

    async def receive(self) -> Any:
        await self.disconnect.wait()
        return {"type": "http.disconnect"}

    @property
    def bodies(self) -> list[bytes]:
        return [m["body"] for m in self.messages if m["type"] == "http.response.body"]


async def test_each_upstream_event_is_one_asgi_message() -> None:
    raw = b"".join(EVENTS)
    # Two events in one read, one event over three reads, the rest byte by byte at the end.
    pieces = [
        raw[: len(EVENTS[0]) + len(EVENTS[1])],
        *cuts(raw[len(EVENTS[0]) + len(EVENTS[1]) :], [10, 20, 300]),
    ]
    closed: list[str] = []

    async def upstream() -> AsyncGenerator[bytes, None]:
        for piece in pieces:
            yield piece

    cleanup = AsyncExitStack()
    cleanup.callback(closed.append, "cleanup")
    capture = AsgiCapture()
    await SSEProxyResponse(upstream(), cleanup)({"type": "http"}, capture.receive, capture.send)
    assert capture.messages[0]["type"] == "http.response.start"
    assert capture.bodies == [*EVENTS, b""]
    assert closed == ["cleanup"]


class Upper:
    """An event filter: upper-cases every event, drops the one whose text is ``ld``."""

    def feed(self, event: bytes) -> list[bytes]:
        return [] if b'"ld"' in event else [event.upper()]

    def finish(self) -> list[bytes]:
        return []


class HoldAll:
    """An event filter that holds every event until the upstream ends (or breaks)."""

    def __init__(self) -> None:
        self.held: list[bytes] = []

    def feed(self, event: bytes) -> list[bytes]:
        self.held.append(event)
        return []

    def finish(self) -> list[bytes]:
        held, self.held = self.held, []
        return held


async def test_event_filter_and_inspect_see_every_event() -> None:
    async def upstream() -> AsyncGenerator[bytes, None]:
        yield b"".join(EVENTS)

    seen: list[bytes] = []
    capture = AsgiCapture()
    response = SSEProxyResponse(upstream(), AsyncExitStack(), events=Upper(), inspect=seen.append)
    await response({"type": "http"}, capture.receive, capture.send)
    sent = [event.upper() for event in EVENTS if b'"ld"' not in event]
    assert len(sent) < len(EVENTS)
    assert capture.bodies == [*sent, b""]
    assert seen == sent


async def test_held_events_go_out_before_the_end_or_the_error() -> None:
    async def ends() -> AsyncGenerator[bytes, None]:
        yield b"".join(EVENTS)

    capture = AsgiCapture()
    await SSEProxyResponse(ends(), AsyncExitStack(), events=HoldAll())(
        {"type": "http"}, capture.receive, capture.send
    )
    assert capture.bodies == [*EVENTS, b""]

    async def breaks() -> AsyncGenerator[bytes, None]:
        yield EVENTS[0]
        raise EngineUnavailableError("engine broke the connection")

    capture = AsgiCapture()
    await SSEProxyResponse(breaks(), AsyncExitStack(), events=HoldAll())(
        {"type": "http"}, capture.receive, capture.send
    )
    assert capture.bodies[0] == EVENTS[0]
    assert json.loads(capture.bodies[1][6:])["error"]["code"] == "engine_unavailable"


async def test_a_broken_upstream_ends_with_an_error_event() -> None:
    async def upstream() -> AsyncGenerator[bytes, None]:
        yield EVENTS[0]
        raise EngineUnavailableError("engine broke the connection")

    capture = AsgiCapture()
    await SSEProxyResponse(upstream(), AsyncExitStack())(
        {"type": "http"}, capture.receive, capture.send
    )
    assert capture.bodies[0] == EVENTS[0]
    assert capture.bodies[1].startswith(b"data: ")
    error = json.loads(capture.bodies[1][6:])["error"]
    assert error["code"] == "engine_unavailable"
    assert capture.bodies[2:] == [b""]


async def read_events(lines: AsyncIterator[bytes], count: int) -> list[bytes]:
    found: list[bytes] = []
    splitter = SSEEventSplitter()
    async for chunk in lines:
        found.extend(splitter.feed(chunk))
        if len(found) >= count:
            break
    return found


async def test_stream_passes_events_unchanged_except_the_model(gateway: Gateway) -> None:
    upstream_events = [chunk_event(gateway.adapter_upstream, t) for t in ("a", "b\n", "c")]
    raw = b"".join([*upstream_events, DONE])

    async def scripted(recorded: Recorded) -> Reply:
        return Stream(cuts(raw, [5, len(upstream_events[0]) + 9, 1, 1]))

    gateway.fake.handler = scripted
    response = await gateway.http.post("/v1/chat/completions", json=chat(ADAPTER, stream=True))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    expected = [chunk_event(ADAPTER, t) for t in ("a", "b\n", "c")] + [DONE]
    assert split_events(response.content) == expected
    assert gateway.fake.requests[-1].json()["model"] == gateway.adapter_upstream


async def test_each_event_reaches_the_client_before_the_next_exists(gateway: Gateway) -> None:
    gates = [asyncio.Event() for _ in EVENTS]

    async def gated(recorded: Recorded) -> Reply:
        steps: list[bytes | asyncio.Event] = []
        for event, gate in zip(EVENTS, gates, strict=True):
            steps += [event, gate]
        return Stream(steps)

    gateway.fake.handler = gated
    received: list[bytes] = []
    async with gateway.http.stream(
        "POST", "/v1/chat/completions", json=chat(stream=True)
    ) as response:
        chunks = response.aiter_raw()
        splitter = SSEEventSplitter()
        for index, gate in enumerate(gates):
            # The upstream holds event index+1 until the client has seen event index.
            while len(received) <= index:
                chunk = await asyncio.wait_for(anext(chunks), timeout=5)
                received.extend(splitter.feed(chunk))
            assert received == EVENTS[: index + 1]
            gate.set()
    assert received == EVENTS


async def test_stream_breaking_after_headers_ends_with_error_event(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    async def breaking(recorded: Recorded) -> Reply:
        return Stream(EVENTS[:2], fail_at_end=True)

    gateway.fake.handler = breaking
    with caplog.at_level("INFO", logger="gateway.access"):
        response = await gateway.http.post(
            "/v1/chat/completions", json=chat(stream=True), headers={"x-request-id": "broken"}
        )
        (line,) = await access_lines(caplog, "broken")
    assert response.status_code == 200
    events = split_events(response.content)
    assert events[:2] == EVENTS[:2]
    assert len(events) == 3 and DONE not in events
    error = json.loads(events[2].removeprefix(b"data: "))["error"]
    assert error["code"] == "engine_unavailable"
    assert set(error) == {"message", "type", "param", "code"}
    assert line["status"] == 200 and line["error"] == "engine_unavailable"


async def test_client_disconnect_closes_upstream_and_releases_lease(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    never = asyncio.Event()

    async def endless(recorded: Recorded) -> Reply:
        return Stream([chunk_event(gateway.adapter_upstream, "Hel"), never, DONE])

    gateway.fake.handler = endless
    with caplog.at_level("INFO", logger="gateway.access"):
        async with gateway.http.stream(
            "POST",
            "/v1/chat/completions",
            json=chat(ADAPTER, stream=True),
            headers={"x-request-id": "leaves"},
        ) as response:
            first = await read_events(response.aiter_raw(), 1)
            assert first == [chunk_event(ADAPTER, "Hel")]
            assert gateway.leases() == 1  # held while the stream runs
        # Leaving the block closes the client's connection mid-stream.
        await asyncio.wait_for(gateway.fake.stream_cancelled.wait(), timeout=5)
        (line,) = await access_lines(caplog, "leaves")
    assert gateway.leases() == 0
    assert line["client_disconnected"] is True and line["stream"] is True


async def test_lease_is_held_until_the_stream_ends(gateway: Gateway) -> None:
    gate = asyncio.Event()

    async def gated(recorded: Recorded) -> Reply:
        return Stream([EVENTS[0], gate, *EVENTS[1:]])

    gateway.fake.handler = gated
    async with gateway.http.stream(
        "POST", "/v1/chat/completions", json=chat(ADAPTER, stream=True)
    ) as response:
        chunks = response.aiter_raw()
        await read_events(chunks, 1)
        assert gateway.leases() == 1
        gate.set()
        rest = b"".join([chunk async for chunk in chunks])
        assert rest.endswith(DONE)
    assert gateway.leases() == 0


async def test_stream_usage_reaches_the_access_log(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    async def with_usage(recorded: Recorded) -> Reply:
        return Stream([EVENTS[0], usage_event(BASE, 11, 1), DONE])

    gateway.fake.handler = with_usage
    body = chat(stream=True, stream_options={"include_usage": True})
    with caplog.at_level("INFO", logger="gateway.access"):
        response = await gateway.http.post(
            "/v1/chat/completions", json=body, headers={"x-request-id": "usage"}
        )
        (line,) = await access_lines(caplog, "usage")
    assert split_events(response.content) == [EVENTS[0], usage_event(BASE, 11, 1), DONE]
    assert (line["prompt_tokens"], line["completion_tokens"]) == (11, 1)
    assert line["ttfb_ms"] is not None and line["ttfb_ms"] <= line["latency_ms"]


@pytest.mark.parametrize("client_asks", [False, True])
async def test_an_escaped_stream_options_key_decides_like_a_plain_one(
    gateway: Gateway, caplog: pytest.LogCaptureFixture, client_asks: bool
) -> None:
    """Bug: the usage decision read the raw bytes, so ``"stream_\\u006fptions"`` (the same key,
    spelled with an escape) switched token accounting off, or had the usage the client asked
    for stripped. The parsed request decides."""
    asks = b"true" if client_asks else b"false"
    raw = (
        b'{"model":"%s","messages":[{"role":"user","content":"hi"}],"stream":true,'
        b'"stream_\\u006fptions":{"include_usage":%s}}' % (BASE.encode(), asks)
    )
    request_id = f"escaped-{client_asks}"
    with caplog.at_level("INFO", logger="gateway.access"):
        response = await gateway.http.post(
            "/v1/chat/completions",
            content=raw,
            headers={"x-request-id": request_id, "content-type": "application/json"},
        )
        (line,) = await access_lines(caplog, request_id)
    assert response.status_code == 200, response.text
    # The engine was asked for usage, whatever the client's spelling.
    assert gateway.fake.requests[-1].json()["stream_options"]["include_usage"] is True
    assert line["prompt_tokens"] is not None and line["completion_tokens"] is not None
    usage_chunks = [e for e in split_events(response.content) if b'"choices":[]' in e]
    assert bool(usage_chunks) is client_asks
