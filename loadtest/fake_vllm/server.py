"""The FAKE vLLM on a real socket: HTTP/1.1 for a :class:`~loadtest.fake_vllm.engine.FakeVLLM`.

It stands where vLLM would stand, so that a benchmark measures a gateway's own cost and the
gateway's tests can make an engine misbehave on purpose; it is never a stand-in for vLLM in
correctness tests. Raw asyncio protocol with httptools' parser (uvloop under the CLI): with no
script, no delay and no request log it answers inside ``data_received``, and one core serves
tens of thousands of small requests per second, so it is not the bottleneck of a benchmark.
Otherwise each answer is a task (in request order per connection) that may wait on a test's
script, a slow load or a stream step's event. Routes are :class:`FakeVLLM`'s, plus
``/fake/stats`` (JSON counters).

Run: ``python -m loadtest.fake_vllm --port 0 --chunks 16``; the first line it prints is
``fake-vllm listening on http://HOST:PORT``. Started by the benchmark (:mod:`loadtest.procs`);
tests call :func:`start_server` or :func:`serving` in their own loop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from typing import cast

import httptools
import uvloop

from loadtest.fake_vllm import bodies
from loadtest.fake_vllm.engine import FakeBehaviour, FakeVLLM, Full, Recorded, Reply, Stream

MAX_BODY_BYTES = 1 << 20
MAX_URL_BYTES = 8192
MAX_HEADER_BYTES = 64 * 1024
READY_PREFIX = "fake-vllm listening on "

_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    413: b"Payload Too Large",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}


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


def _refusal(status: int, message: str) -> Full:
    return Full(status, bodies.FakeRequestError(status, message).body())


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 keep-alive connection; requests answered in order."""

    def __init__(self, fake: FakeVLLM) -> None:
        self._fake = fake
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body = bytearray()
        self._error: tuple[int, str] | None = None
        self._header_bytes = 0
        self._tail: asyncio.Task[None] | None = None
        self._open: list[Recorded] = []

    # --- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        if self._fake.unreachable:
            self._transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        for recorded in self._open:
            recorded.disconnected.set()
        if self._tail is not None:
            self._tail.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._write_full(_refusal(400, f"bad HTTP: {exc}"), False)

    # --- httptools callbacks -----------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url, self._error, self._header_bytes = b"", None, 0
        self._headers = {}
        self._body = bytearray()

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_URL_BYTES:
            self._error = (431, "URL too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADER_BYTES:
            self._error = (431, "headers too large")
        elif self._fake.behaviour.record_requests:
            self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        if self._error is None and len(self._body) + len(body) > MAX_BODY_BYTES:
            self._error = (413, f"body over {MAX_BODY_BYTES} bytes")
        if self._error is None:
            self._body += body

    def on_message_complete(self) -> None:
        keep_alive = self._parser.should_keep_alive()
        fake = self._fake
        if fake.unreachable:
            if self._transport is not None:
                self._transport.abort()
            return
        method = self._parser.get_method().decode()
        path = self._url.split(b"?", 1)[0].decode("latin-1")
        if self._error is not None:
            status, message = self._error
            self._later(_refusal(status, message), False, None)
        elif fake.answers_at_once:
            reply = fake.dispatch(method, path, bytes(self._body))
            behaviour = fake.behaviour
            if self._tail is None and behaviour.delay_ms <= 0 and behaviour.chunk_delay_ms <= 0:
                self._write_now(reply, keep_alive)
            else:
                self._later(reply, keep_alive, None)
        else:
            recorded = Recorded(method, path, self._headers, bytes(self._body))
            self._later(None, keep_alive, recorded)

    # --- responses ---------------------------------------------------------------------------
    def _later(self, reply: Reply | None, keep_alive: bool, recorded: Recorded | None) -> None:
        """Answer after the answers before it, once ``recorded``'s reply is known."""
        if recorded is not None:
            self._open.append(recorded)
        self._tail = asyncio.get_running_loop().create_task(
            self._write_later(reply, keep_alive, recorded, self._tail)
        )

    def _write_now(self, reply: Reply, keep_alive: bool) -> None:
        if isinstance(reply, Full):
            self._write_full(reply, keep_alive)
            return
        transport = self._transport
        if transport is None:
            return
        transport.write(_head(200, b"text/event-stream", keep_alive, None))
        for step in reply.steps:
            if isinstance(step, bytes):
                transport.write(_chunk(step))
        self._finish_stream(reply, keep_alive)

    def _write_full(self, reply: Full, keep_alive: bool) -> None:
        if self._transport is None:
            return
        self._transport.write(
            _head(reply.status, reply.content_type, keep_alive, len(reply.body)) + reply.body
        )
        if not keep_alive:
            self._transport.close()

    def _finish_stream(self, reply: Stream, keep_alive: bool) -> None:
        if self._transport is None:
            return
        if reply.fail_at_end:  # headers and some events sent, then the connection breaks
            self._transport.abort()
            return
        self._transport.write(b"0\r\n\r\n")
        if not keep_alive:
            self._transport.close()

    async def _write_later(
        self,
        reply: Reply | None,
        keep_alive: bool,
        recorded: Recorded | None,
        previous: asyncio.Task[None] | None,
    ) -> None:
        fake = self._fake
        try:
            if recorded is not None:
                try:
                    reply = await fake.handle(recorded)
                except Exception as exc:  # a broken test script answers 500, not silence
                    reply = _refusal(500, f"fake vLLM handler failed: {exc!r}")
            assert reply is not None
            if previous is not None:
                await previous
            behaviour = fake.behaviour
            fake.started(reply)
            try:
                if behaviour.delay_ms > 0:
                    await asyncio.sleep(behaviour.delay_ms / 1000)
                if isinstance(reply, Full):
                    self._write_full(reply, keep_alive)
                    return
                await self._write_stream(reply, keep_alive, behaviour.chunk_delay_ms / 1000)
            finally:
                fake.finished(reply)
        finally:
            if recorded is not None:
                self._open.remove(recorded)

    async def _write_stream(self, reply: Stream, keep_alive: bool, chunk_delay_s: float) -> None:
        finished = False
        try:
            if self._transport is None:
                return
            self._transport.write(_head(200, b"text/event-stream", keep_alive, None))
            written = 0
            for step in reply.steps:
                if isinstance(step, asyncio.Event):
                    await step.wait()
                    continue
                if written and chunk_delay_s > 0:
                    await asyncio.sleep(chunk_delay_s)
                if self._transport is None:
                    return
                self._transport.write(_chunk(step))
                written += 1
            finished = self._transport is not None
            self._finish_stream(reply, keep_alive)
        finally:
            if not finished:
                self._fake.stream_cancelled.set()


async def start_server(
    fake: FakeVLLM | FakeBehaviour, host: str = "127.0.0.1", port: int = 0
) -> tuple[asyncio.Server, FakeVLLM, int]:
    """Serve ``fake`` (or a new one) on the running loop; returns the server, fake and port."""
    if isinstance(fake, FakeBehaviour):
        fake = FakeVLLM(fake)
    served = fake
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Connection(served), host, port, backlog=4096)
    bound = server.sockets[0].getsockname()[1]
    return server, fake, int(bound)


@contextlib.asynccontextmanager
async def serving(fake: FakeVLLM, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """Serve ``fake`` on a free loopback port for the block; yields its base URL."""
    server, _, port = await start_server(fake, host)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def _serve_forever(behaviour: FakeBehaviour, host: str, port: int) -> None:
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
        prog="python -m loadtest.fake_vllm",
        description="FAKE vLLM OpenAI server (no model: fixed words).",
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
        "--load-delay-ms", type=float, default=0.0, help="how long a LoRA load takes"
    )
    parser.add_argument(
        "--strict-models",
        action="store_true",
        help="404 for a model that is neither the base nor a loaded adapter",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.chunks <= bodies.MAX_TOKENS_LIMIT:
        parser.error(f"--chunks must be 1..{bodies.MAX_TOKENS_LIMIT}")
    if args.delay_ms < 0 or args.chunk_delay_ms < 0 or args.load_delay_ms < 0:
        parser.error("delays must be >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    behaviour = FakeBehaviour(
        model=args.model,
        chunks=args.chunks,
        delay_ms=args.delay_ms,
        chunk_delay_ms=args.chunk_delay_ms,
        strict_models=args.strict_models,
        load_delay_ms=args.load_delay_ms,
    )
    try:
        uvloop.run(_serve_forever(behaviour, args.host, args.port))
    except KeyboardInterrupt:
        pass
    sys.exit(0)
