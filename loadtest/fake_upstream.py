"""A FAKE OpenAI-compatible upstream (no model) that answers instantly, for benchmarks and tests.

It stands where vLLM would stand, so that a benchmark measures a gateway's own cost and nothing
else; it is never a stand-in for vLLM in correctness tests. Raw asyncio protocol with httptools'
parser on uvloop: one core serves tens of thousands of small requests per second, so it is not
the bottleneck. Routes: ``/health``, ``/metrics`` (vLLM-like), ``/fake/stats`` (JSON counters),
``GET /v1/models``, ``POST /v1/completions``, ``/v1/chat/completions`` (stream or not, usage,
``include_usage``), ``/v1/load_lora_adapter`` and ``/v1/unload_lora_adapter`` (any name/path).
Bodies and shapes are in :mod:`loadtest.fake_openai`.

Run: ``python -m loadtest.fake_upstream --port 0 --chunks 16``; the first line it prints is
``fake-upstream listening on http://HOST:PORT``. Started by the benchmark (:mod:`loadtest.procs`)
and by tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import httptools
import uvloop

from loadtest import fake_openai as fo

MAX_BODY_BYTES = 1 << 20
MAX_URL_BYTES = 8192
MAX_HEADER_BYTES = 64 * 1024
READY_PREFIX = "fake-upstream listening on "

_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    413: b"Payload Too Large",
    431: b"Request Header Fields Too Large",
}
JSON = b"application/json"
TEXT = b"text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Full:
    status: int
    body: bytes
    content_type: bytes = JSON


@dataclass(frozen=True, slots=True)
class Stream:
    events: list[bytes]


Reply = Full | Stream
Handler = Callable[[fo.FakeState, bytes], Reply]


def _completion(chat: bool) -> Handler:
    def handle(state: fo.FakeState, body: bytes) -> Reply:
        job = fo.parse_completion(state, fo.parse_json_object(body), chat=chat)
        state.completions_total += 1
        state.prompt_tokens_total += job.prompt_tokens
        state.generation_tokens_total += job.tokens
        if not job.stream:
            return Full(200, fo.full_response(state, job))
        events = fo.stream_events(state, job)
        state.stream_chunks_total += len(events) - 1  # [DONE] is not a chunk
        return Stream(events)

    return handle


ROUTES: dict[tuple[bytes, bytes], Handler] = {
    (b"GET", b"/health"): lambda s, b: Full(200, b"", TEXT),
    (b"GET", b"/metrics"): lambda s, b: Full(200, fo.metrics_text(s), b"text/plain; version=0.0.4"),
    (b"GET", b"/fake/stats"): lambda s, b: Full(200, json.dumps(s.stats()).encode()),
    (b"GET", b"/v1/models"): lambda s, b: Full(200, fo.models_body(s)),
    (b"POST", b"/v1/completions"): _completion(chat=False),
    (b"POST", b"/v1/chat/completions"): _completion(chat=True),
    (b"POST", b"/v1/load_lora_adapter"): lambda s, b: Full(
        200, fo.load_lora(s, fo.parse_json_object(b)), TEXT
    ),
    (b"POST", b"/v1/unload_lora_adapter"): lambda s, b: Full(
        200, fo.unload_lora(s, fo.parse_json_object(b)), TEXT
    ),
}
_PATHS = {path for _, path in ROUTES}


def dispatch(state: fo.FakeState, method: bytes, path: bytes, body: bytes) -> Reply:
    state.requests_total += 1
    handler = ROUTES.get((method, path))
    try:
        if handler is None:
            status = 405 if path in _PATHS else 404
            raise fo.FakeRequestError(status, f"{method.decode()} {path.decode()} is not served")
        return handler(state, body)
    except fo.FakeRequestError as exc:
        return Full(exc.status, exc.body())


def _head(status: int, content_type: bytes, keep_alive: bool, length: int | None) -> bytes:
    lines = [
        b"HTTP/1.1 %d %s" % (status, _REASONS.get(status, b"Error")),
        b"Content-Type: " + content_type,
    ]
    lines.append(
        b"Transfer-Encoding: chunked" if length is None else b"Content-Length: %d" % length
    )
    if not keep_alive:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 keep-alive connection; requests answered in order."""

    def __init__(self, state: fo.FakeState) -> None:
        self._state = state
        self._instant = state.behaviour.delay_ms <= 0 and state.behaviour.chunk_delay_ms <= 0
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._body = bytearray()
        self._error: tuple[int, str] | None = None
        self._header_bytes = 0
        self._tail: asyncio.Task[None] | None = None

    # --- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._tail is not None:
            self._tail.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._write_full(Full(400, fo.FakeRequestError(400, f"bad HTTP: {exc}").body()), False)

    # --- httptools callbacks -----------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url, self._error, self._header_bytes = b"", None, 0
        self._body = bytearray()

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_URL_BYTES:
            self._error = (431, "URL too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADER_BYTES:
            self._error = (431, "headers too large")

    def on_body(self, body: bytes) -> None:
        if self._error is None and len(self._body) + len(body) > MAX_BODY_BYTES:
            self._error = (413, f"body over {MAX_BODY_BYTES} bytes")
        if self._error is None:
            self._body += body

    def on_message_complete(self) -> None:
        keep_alive = self._parser.should_keep_alive()
        if self._error is not None:
            status, message = self._error
            reply: Reply = Full(status, fo.FakeRequestError(status, message).body())
            keep_alive = False
        else:
            path = self._url.split(b"?", 1)[0]
            reply = dispatch(self._state, self._parser.get_method(), path, bytes(self._body))
        if self._instant and self._tail is None:
            self._write(reply, keep_alive)
        else:
            self._tail = asyncio.get_running_loop().create_task(
                self._write_later(reply, keep_alive, self._tail)
            )

    # --- responses ---------------------------------------------------------------------------
    def _write(self, reply: Reply, keep_alive: bool) -> None:
        if isinstance(reply, Full):
            self._write_full(reply, keep_alive)
            return
        transport = self._transport
        if transport is None:
            return
        transport.write(_head(200, b"text/event-stream", keep_alive, None))
        for event in reply.events:
            transport.write(_chunk(event))
        self._finish_stream(keep_alive)

    def _write_full(self, reply: Full, keep_alive: bool) -> None:
        if self._transport is None:
            return
        self._transport.write(
            _head(reply.status, reply.content_type, keep_alive, len(reply.body)) + reply.body
        )
        if not keep_alive:
            self._transport.close()

    def _finish_stream(self, keep_alive: bool) -> None:
        if self._transport is None:
            return
        self._transport.write(b"0\r\n\r\n")
        if not keep_alive:
            self._transport.close()

    async def _write_later(
        self, reply: Reply, keep_alive: bool, previous: asyncio.Task[None] | None
    ) -> None:
        if previous is not None:
            await previous
        behaviour = self._state.behaviour
        self._state.running += 1
        try:
            if behaviour.delay_ms > 0:
                await asyncio.sleep(behaviour.delay_ms / 1000)
            if isinstance(reply, Full) or behaviour.chunk_delay_ms <= 0:
                self._write(reply, keep_alive)
                return
            if self._transport is None:
                return
            self._transport.write(_head(200, b"text/event-stream", keep_alive, None))
            for i, event in enumerate(reply.events):
                if i and self._transport is not None:
                    await asyncio.sleep(behaviour.chunk_delay_ms / 1000)
                if self._transport is None:
                    return
                self._transport.write(_chunk(event))
            self._finish_stream(keep_alive)
        finally:
            self._state.running -= 1


async def start_server(
    behaviour: fo.FakeBehaviour, host: str = "127.0.0.1", port: int = 0
) -> tuple[asyncio.Server, fo.FakeState, int]:
    """Serve on the running loop; returns the server, its state and the bound port."""
    state = fo.FakeState(behaviour)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Connection(state), host, port, backlog=4096)
    bound = server.sockets[0].getsockname()[1]
    return server, state, int(bound)


async def _serve_forever(behaviour: fo.FakeBehaviour, host: str, port: int) -> None:
    server, _, bound = await start_server(behaviour, host, port)
    print(f"{READY_PREFIX}http://{host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.fake_upstream",
        description="FAKE OpenAI-compatible upstream (no model).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument("--model", default="fake-base", help="base model id it serves")
    parser.add_argument("--chunks", type=int, default=16, help="token chunks per response")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="wait before answering")
    parser.add_argument(
        "--chunk-delay-ms", type=float, default=0.0, help="wait between streamed chunks"
    )
    parser.add_argument(
        "--strict-models",
        action="store_true",
        help="404 for a model that is neither the base nor a loaded adapter",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.chunks <= fo.MAX_TOKENS_LIMIT:
        parser.error(f"--chunks must be 1..{fo.MAX_TOKENS_LIMIT}")
    if args.delay_ms < 0 or args.chunk_delay_ms < 0:
        parser.error("delays must be >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    behaviour = fo.FakeBehaviour(
        model=args.model,
        chunks=args.chunks,
        delay_ms=args.delay_ms,
        chunk_delay_ms=args.chunk_delay_ms,
        strict_models=args.strict_models,
    )
    try:
        uvloop.run(_serve_forever(behaviour, args.host, args.port))
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
