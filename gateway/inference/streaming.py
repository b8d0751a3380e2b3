"""SSE pass-through: one upstream event in, one event out, as soon as it arrives.

:class:`SSEProxyResponse` is the ASGI response the proxy (:mod:`gateway.inference.proxy`) returns
for a streamed completion once the engine has answered 200. It reads the engine's body as it comes,
splits it on the SSE event delimiter (:class:`SSEEventSplitter`, which carries partial events across
reads), and writes every complete event to the client in its own ASGI message: no coalescing, no
buffering. ``data: [DONE]`` passes through like any other event. The proxy's :class:`EventFilter`
may rewrite, drop or briefly hold events (its ``finish`` releases what it holds when the upstream
ends or breaks); ``inspect`` sees each event as it is sent.

It also owns the end of the request: if the engine breaks after the headers went out, the
client gets one final ``data: {"error": ...}`` event (:meth:`GatewayError.to_sse`); if the client
disconnects, the upstream response is closed at once so vLLM aborts the generation; and in every
case the cleanup stack (upstream response, adapter lease) is closed exactly once.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import AsyncExitStack
from typing import Protocol

import anyio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.errors import EngineError, GatewayError

logger = logging.getLogger(__name__)

EVENT_DELIMITER = b"\n\n"
#: An upstream event larger than this is a broken engine, not a completion chunk.
MAX_EVENT_BYTES = 8 << 20

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class SSEEventSplitter:
    """Cut a byte stream into complete SSE events (delimiter included)."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        data = self._pending + chunk if self._pending else chunk
        events: list[bytes] = []
        start = 0
        while (end := data.find(EVENT_DELIMITER, start)) >= 0:
            end += len(EVENT_DELIMITER)
            events.append(data[start:end])
            start = end
        self._pending = data[start:]
        if len(self._pending) > MAX_EVENT_BYTES:
            raise EngineError(f"engine sent an SSE event over {MAX_EVENT_BYTES} bytes")
        return events

    def flush(self) -> bytes:
        """What is left after the upstream ended: an unterminated last event, or nothing."""
        rest, self._pending = self._pending, b""
        return rest


class EventFilter(Protocol):
    """What happens to the engine's events on their way to the client (the proxy's rename and
    usage handling)."""

    def feed(self, event: bytes) -> Sequence[bytes]:
        """The events to send now, in order, for one upstream event (maybe none)."""
        ...

    def finish(self) -> Sequence[bytes]:
        """Events still held when the upstream ended or broke."""
        ...


class SSEProxyResponse(Response):
    """Stream upstream SSE events to the client one by one; clean up exactly once.

    A :class:`starlette.responses.Response` only so that FastAPI hands it over untouched; it
    writes its own ASGI messages.
    """

    def __init__(
        self,
        upstream: AsyncGenerator[bytes, None],
        cleanup: AsyncExitStack,
        *,
        headers: list[tuple[bytes, bytes]] | None = None,
        events: EventFilter | None = None,
        inspect: Callable[[bytes], None] | None = None,
        on_disconnect: Callable[[], None] | None = None,
        on_error: Callable[[GatewayError], None] | None = None,
    ) -> None:
        self.status_code = 200
        self.background = None
        self._upstream = upstream
        self._cleanup = cleanup
        self.raw_headers = [*SSE_HEADERS, *(headers or [])]
        self._events = events
        self._inspect = inspect
        self._on_disconnect = on_disconnect
        self._on_error = on_error
        self._disconnected = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._disconnected = False
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async with anyio.create_task_group() as group:
                group.start_soon(self._watch_disconnect, receive, group.cancel_scope)
                await self._pump(send)
                group.cancel_scope.cancel()
        finally:
            # Closing the upstream response drops its connection: vLLM sees the disconnect and
            # aborts the request. Shielded so a cancelled request still releases its lease.
            # Done before the client hears the end, so a finished stream holds nothing.
            with anyio.CancelScope(shield=True):
                await self._upstream.aclose()
                await self._cleanup.aclose()
        if not self._disconnected:
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _watch_disconnect(self, receive: Receive, scope: anyio.CancelScope) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self._disconnected = True
                if self._on_disconnect is not None:
                    self._on_disconnect()
                scope.cancel()
                return

    async def _pump(self, send: Send) -> None:
        splitter = SSEEventSplitter()
        events, inspect = self._events, self._inspect
        try:
            # _send_event inlined: this loop runs for every token of every stream.
            async for chunk in self._upstream:
                for event in splitter.feed(chunk):
                    for out in events.feed(event) if events is not None else (event,):
                        if inspect is not None:
                            inspect(out)
                        await send({"type": "http.response.body", "body": out, "more_body": True})
            if rest := splitter.flush():
                await self._send_event(send, rest)
            await self._send_held(send)
        except GatewayError as exc:
            logger.warning("stream broken after headers: %s", exc.message)
            await self._send_held(send)
            await self._send_error(send, exc)
        except Exception:
            logger.exception("unexpected error while streaming")
            await self._send_error(send, GatewayError("internal error while streaming"))

    async def _send_error(self, send: Send, error: GatewayError) -> None:
        if self._on_error is not None:
            self._on_error(error)
        await send({"type": "http.response.body", "body": error.to_sse(), "more_body": True})

    async def _send_event(self, send: Send, event: bytes) -> None:
        if self._events is None:
            await self._send_out(send, event)
            return
        for out in self._events.feed(event):
            await self._send_out(send, out)

    async def _send_held(self, send: Send) -> None:
        if self._events is not None:
            for out in self._events.finish():
                await self._send_out(send, out)

    async def _send_out(self, send: Send, event: bytes) -> None:
        if self._inspect is not None:
            self._inspect(event)
        await send({"type": "http.response.body", "body": event, "more_body": True})
