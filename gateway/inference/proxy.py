"""The OpenAI proxy: send a validated client call to its routed engine, render the answer.

:class:`OpenAIProxy` is what the OpenAI routes (:mod:`gateway.api.openai.routes`) call once a
body has been validated. It routes ``model`` (holding the adapter lease for the whole request,
streams included), forwards the client's own JSON with only ``model`` replaced by the engine's
name for it (:func:`body_for_upstream`) and the sampling defaults the client left out added
(:func:`upstream_body`, :mod:`gateway.inference.sampling`), and renders the engine's answer:
a non-streamed body is passed through with ``model`` renamed back to the public name; a stream
goes to
:class:`gateway.inference.streaming.SSEProxyResponse`. Engine error statuses become
:class:`~gateway.errors.UpstreamHTTPError` with the engine's message; transport failures are
translated by :func:`gateway.engines.client.translate_session_errors`.

The request's record is stamped when the engine is sent the request, when its headers arrive and
when its body ends: the ``Server-Timing`` header, the access log and the overhead histogram are
computed from those (:mod:`gateway.observability.server_timing`).

Token usage goes on the request's record (and so into the access log and the metrics), read by
the one parser of :mod:`gateway.inference.usage`: from the body's ``usage``, or, for a stream,
from the engine's final usage chunk. A streaming client that did not ask for usage (as its parsed
request says: :attr:`ProxyCall.client_asked_usage`) gets it asked for anyway
(:func:`gateway.inference.usage.ask_for_stream_usage`), and that chunk is dropped before it
reaches the client, so the client sees exactly the events vLLM would have sent it. Only events
holding ``"choices":[]`` (the usage chunk's mark) are parsed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from enum import Enum

import aiohttp
import anyio
from starlette.responses import Response
from starlette.types import Receive

from gateway.engines.client import translate_session_errors, upstream_error_from
from gateway.errors import EngineUnavailableError, GatewayError, log_detail
from gateway.inference.record import NullObserver, RequestInfo, RequestObserver
from gateway.inference.responses import new_response_id, rename_versioned_models
from gateway.inference.routing import Route, Router
from gateway.inference.sampling import DefaultsTarget, add_fields, defaults_to_send
from gateway.inference.streaming import SSEProxyResponse
from gateway.inference.usage import (
    EventUsage,
    StreamUsage,
    UsageFilter,
    ask_for_stream_usage,
    usage_of_body,
)

logger = logging.getLogger(__name__)

#: nginx's status for "the client closed the connection before the answer": logged, never seen.
CLIENT_CLOSED_REQUEST = 499
UPSTREAM_HEADERS = {"content-type": "application/json", "accept-encoding": "identity"}

# In valid JSON every quote inside a string is escaped, so an unescaped quote, model, quote,
# colon is always an object key. The letters of "model" escaped all begin with \u006.
_MODEL_KEY_START = b'"model"'
_MODEL_KEY = re.compile(rb'"model"[ \t\r\n]*:[ \t\r\n]*')
_MODEL_LETTER_ESCAPE = b"\\u006"
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


class StreamKind(Enum):
    """Where a stream's usage is: the final usage chunk of a chat / completion stream (asked
    for when the client did not, then hidden), the final event of a Responses stream, the
    ``message_delta`` event of an Anthropic Messages stream."""

    CHAT = "chat"
    RESPONSES = "responses"
    MESSAGES = "messages"


@dataclass(frozen=True, slots=True)
class ProxyCall:
    """One validated client request, as the client sent it."""

    #: Engine path, e.g. ``/v1/chat/completions``.
    endpoint: str
    #: The public model to route by; None: no model, the call goes to ``engine``.
    model: str | None
    stream: bool
    #: The client's JSON body, byte for byte (empty for a GET).
    body: bytes
    #: ``stream_options.include_usage`` of the parsed request (a stream's client asked for
    #: the usage chunk, so it is not stripped).
    client_asked_usage: bool = False
    #: How this endpoint spells sampling parameters; None: no defaults apply.
    defaults: DefaultsTarget | None = None
    #: Top-level keys the parsed request holds with a non-null value.
    sent: frozenset[str] = frozenset()
    method: str = "POST"
    #: Run on this engine (it holds the state the call continues).
    engine: str | None = None
    stream_kind: StreamKind = StreamKind.CHAT
    #: Give the engine the response id to use, one naming the engine (Responses API).
    new_response_id: bool = False
    #: What an alias's version split sticks by (:func:`gateway.inference.aliases.affinity_of`).
    affinity: str = ""


def _escaped(body: bytes, quote_at: int) -> bool:
    backslashes = 0
    at = quote_at - 1
    while at >= 0 and body[at] == 0x5C:
        backslashes += 1
        at -= 1
    return backslashes % 2 == 1


def _model_value_span(body: bytes) -> tuple[int, int] | None:
    """Where the value of the only ``"model"`` key is, when that is certain; else None.

    The top-level key exists (the body was validated). With no escaped letter of "model"
    anywhere it is spelled plainly, so a single plain ``"model":`` key is that one. Several
    (a tool's JSON schema with a "model" property) or a possible escaped spelling: None.
    """
    if _MODEL_LETTER_ESCAPE in body:
        return None
    span = None
    at = body.find(_MODEL_KEY_START)
    while at >= 0:
        key = _MODEL_KEY.match(body, at)
        if key is not None and not _escaped(body, at):
            value = _JSON_STRING.match(body, key.end())
            if span is not None or value is None:
                return None
            span = (value.start(), value.end())
        at = body.find(_MODEL_KEY_START, at + len(_MODEL_KEY_START))
    return span


def body_for_upstream(body: bytes, public_model: str, upstream_model: str) -> bytes:
    """The client's JSON with only the top-level ``model`` value replaced.

    The client's bytes are kept as they are (no re-serialisation that could drop or change a
    field); only when the body holds several ``"model"`` keys (nested ones, duplicates) or may
    spell the key with escapes is it parsed and written again, which keeps every field but not
    the formatting.
    """
    if upstream_model == public_model:
        return body
    span = _model_value_span(body)
    if span is not None:
        start, end = span
        if json.loads(body[start:end]) == public_model:
            return body[:start] + json.dumps(upstream_model).encode() + body[end:]
    payload = json.loads(body)
    payload["model"] = upstream_model
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


class ModelRename:
    """Rewrite ``"model":"<upstream>"`` to the public name in engine output (bytes only)."""

    def __init__(self, upstream_model: str, public_model: str) -> None:
        pairs: dict[bytes, bytes] = {}
        for ascii_only in (False, True):
            old = json.dumps(upstream_model, ensure_ascii=ascii_only).encode()
            new = json.dumps(public_model, ensure_ascii=ascii_only).encode()
            for separator in (b":", b": "):
                pairs[b'"model"' + separator + old] = b'"model"' + separator + new
        self._pairs = list(pairs.items())
        self._public_model = public_model

    def apply(self, data: bytes) -> bytes:
        for old, new in self._pairs:
            if old in data:
                return data.replace(old, new)
        return data

    def apply_to_body(self, body: bytes) -> bytes:
        """For a whole JSON body: falls back to parsing when no needle matched."""
        renamed = self.apply(body)
        if renamed is not body:
            return renamed
        try:
            payload = json.loads(body)
        except ValueError:
            return body
        if isinstance(payload, dict) and "model" in payload:
            payload["model"] = self._public_model
            return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        return body


def upstream_body(call: ProxyCall, body: bytes, route: Route) -> bytes:
    """What the engine gets: ``body`` with the route's sampling defaults the client left out,
    and the engine's name for the model."""
    fields = (
        defaults_to_send(call.defaults, route.sampling_defaults, call.sent)
        if call.defaults is not None
        else {}
    )
    if call.new_response_id:
        fields["request_id"] = new_response_id(route.engine)
    body = add_fields(body, fields)
    if call.model is None:
        return body
    return body_for_upstream(body, call.model, route.upstream_model)


def _renamer(call: ProxyCall, route: Route) -> Callable[[bytes], bytes] | None:
    """How the engine's names for models become the client's in answers."""
    if call.model is None:  # not routed by model: whatever version made it, named publicly
        return rename_versioned_models
    if route.upstream_model != route.public_model:
        return ModelRename(route.upstream_model, route.public_model).apply
    return None


def _note_usage(info: RequestInfo, body: bytes) -> None:
    usage = usage_of_body(body)
    if usage is not None:
        info.prompt_tokens, info.completion_tokens = usage.prompt_tokens, usage.completion_tokens


async def _engine_bytes(
    response: aiohttp.ClientResponse, engine_url: str, info: RequestInfo
) -> AsyncGenerator[bytes, None]:
    with translate_session_errors(engine_url):
        async for chunk in response.content.iter_any():
            yield chunk
    info.upstream_last_byte = time.perf_counter()


async def _cancel_on_disconnect(
    receive: Receive, scope: anyio.CancelScope, info: RequestInfo
) -> None:
    """Once the body is read, ``receive`` only answers when the client disconnects."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            info.client_disconnected = True
            scope.cancel()
            return


class ClientEvents:
    """The engine's events as the client gets them: ``model`` renamed to the public name, and
    the usage chunk counted onto the request's record (and hidden when only the gateway asked
    for it: :class:`gateway.inference.usage.StreamUsage`)."""

    __slots__ = ("_info", "_rename", "_usage")

    def __init__(
        self, info: RequestInfo, rename: Callable[[bytes], bytes] | None, usage: UsageFilter
    ) -> None:
        self._info = info
        self._rename = rename
        self._usage = usage

    def feed(self, event: bytes) -> Sequence[bytes]:
        if self._rename is not None:
            event = self._rename(event)
        out = self._usage.feed(event)
        usage = self._usage.usage
        if usage is not None:
            self._info.prompt_tokens = usage.prompt_tokens
            self._info.completion_tokens = usage.completion_tokens
        return out

    def finish(self) -> Sequence[bytes]:
        return self._usage.finish()


class OpenAIProxy:
    """Forwards validated OpenAI calls to the engine ``model`` routes to."""

    def __init__(self, router: Router, observer: RequestObserver | None = None) -> None:
        self.router = router
        self.observer: RequestObserver = observer or NullObserver()

    async def forward(self, call: ProxyCall, info: RequestInfo, receive: Receive) -> Response:
        """Answer ``call``; ``receive`` is the client's ASGI channel, watched for a disconnect."""
        info.model = call.model
        info.stream = call.stream
        if call.stream:
            return await self._stream(call, info)
        answer: Response | None = None
        # A client that leaves (a timeout, say) cancels the engine request with it, so an
        # abandoned generation does not keep the engine busy.
        with anyio.CancelScope() as scope:
            watcher = asyncio.create_task(_cancel_on_disconnect(receive, scope, info))
            try:
                answer = await self._unary(call, info)
            finally:
                watcher.cancel()
        if answer is None:
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        return answer

    def _route(
        self, call: ProxyCall, exclude: list[str] | None = None
    ) -> AbstractAsyncContextManager[Route]:
        if call.model is not None:
            return self.router.route(
                call.model, engine=call.engine, affinity=call.affinity, exclude=exclude or ()
            )
        return self._engine_route(call.engine)

    @asynccontextmanager
    async def _engine_route(self, name: str | None) -> AsyncIterator[Route]:
        if name is None:
            raise ValueError("a call without a model must name its engine")
        engine = self.router.engine_named(name)
        yield Route(engine, engine.base_model, engine.base_model, adapter=None)

    async def _unary(self, call: ProxyCall, info: RequestInfo) -> Response:
        failed: list[str] = []
        while True:
            async with self._route(call, failed) as route:
                self._note_route(info, route)
                client = route.engine.client
                data = upstream_body(call, call.body, route) if call.body else None
                try:
                    with translate_session_errors(client.base_url):
                        info.upstream_sent = time.perf_counter()
                        async with client.openai_session().request(
                            call.method,
                            client.base_url + call.endpoint,
                            data=data,
                            headers=UPSTREAM_HEADERS,
                        ) as response:
                            info.upstream_first_byte = time.perf_counter()
                            status, content = response.status, await response.read()
                            info.upstream_last_byte = time.perf_counter()
                except EngineUnavailableError as exc:
                    # Nothing reached the client yet: once more, on another engine.
                    if not self._may_fail_over(call, route, failed, exc, info):
                        await self._alias_outcome(route, failed=True)
                        raise
                    continue
                except GatewayError:
                    await self._alias_outcome(route, failed=True)
                    raise
                await self._alias_outcome(route, failed=status >= 500)
                if status != 200:
                    raise _engine_error(route, status, content)
                if call.model is None:
                    content = rename_versioned_models(content)
                elif route.upstream_model != route.public_model:
                    rename = ModelRename(route.upstream_model, route.public_model)
                    content = rename.apply_to_body(content)
            _note_usage(info, content)
            return Response(content=content, media_type="application/json")

    def _may_fail_over(
        self,
        call: ProxyCall,
        route: Route,
        failed: list[str],
        error: GatewayError,
        info: RequestInfo,
    ) -> bool:
        """True (and ``route``'s engine noted as failed) when the request may be retried once
        on another ready engine: its engine refused or reset the connection before any byte
        reached the client, it is not bound to that engine, and another engine is ready."""
        if failed or call.engine is not None or call.model is None:
            return False
        others = [e for e in self.router.engines if e.ready and e.name != route.engine.name]
        if not others:
            return False
        failed.append(route.engine.name)
        self.router.note_failover(route.engine.name)
        logger.warning(
            "request %s: engine %s failed before answering (%s); retrying on another engine",
            info.request_id,
            route.engine.name,
            error.message,
        )
        return True

    async def _stream(self, call: ProxyCall, info: RequestInfo) -> Response:
        usage: UsageFilter
        body = call.body
        if call.stream_kind is StreamKind.CHAT:
            body, strip = ask_for_stream_usage(body, client_asked=call.client_asked_usage)
            usage = StreamUsage(strip=strip)
        elif call.stream_kind is StreamKind.RESPONSES:
            usage = EventUsage.responses()
        else:
            usage = EventUsage.messages()
        tried: list[str] = []
        while True:
            cleanup = AsyncExitStack()
            try:
                route = await cleanup.enter_async_context(self._route(call, tried))
                self._note_route(info, route)
                client = route.engine.client
                data = upstream_body(call, body, route) if body else None
                try:
                    with translate_session_errors(client.base_url):
                        info.upstream_sent = time.perf_counter()
                        response = await client.openai_session().request(
                            call.method,
                            client.base_url + call.endpoint,
                            data=data,
                            headers=UPSTREAM_HEADERS,
                        )
                        info.upstream_first_byte = time.perf_counter()
                except EngineUnavailableError as exc:
                    # No byte reached the client yet: once more, on another engine.
                    if not self._may_fail_over(call, route, tried, exc, info):
                        await self._alias_outcome(route, failed=True)
                        raise
                    await cleanup.aclose()
                    continue
                except GatewayError:
                    await self._alias_outcome(route, failed=True)
                    raise
                # close(), not release(): an unfinished response's connection is dropped, so
                # the engine sees the client leave and aborts the generation.
                cleanup.callback(response.close)
                await self._alias_outcome(route, failed=response.status >= 500)
                with translate_session_errors(client.base_url):
                    if response.status != 200:
                        raise _engine_error(route, response.status, await response.read())
            except BaseException:
                await cleanup.aclose()
                raise
            break
        rename = _renamer(call, route)
        observer = self.observer

        def inspect(event: bytes) -> None:
            observer.stream_event(info, event)

        def disconnected() -> None:
            info.client_disconnected = True

        def failed(error: GatewayError) -> None:
            log_detail(error, info.request_id)
            info.error = str(error.code or error.error_type)
            info.failure = error

        return SSEProxyResponse(
            _engine_bytes(response, client.base_url, info),
            cleanup,
            events=ClientEvents(info, rename, usage),
            inspect=inspect,
            on_disconnect=disconnected,
            on_error=failed,
        )

    @staticmethod
    def _note_route(info: RequestInfo, route: Route) -> None:
        info.adapter = route.adapter
        info.adapter_version = route.version
        info.engine = route.engine.name

    async def _alias_outcome(self, route: Route, *, failed: bool) -> None:
        """Count the answer of an alias's version (and roll it back when it fails too often)."""
        aliases = self.router.aliases
        if route.alias_target is not None and aliases is not None:
            await aliases.outcome(route.public_model, route.alias_target, failed)


def _engine_error(route: Route, status: int, content: bytes) -> GatewayError:
    """The engine's error answer, passed through under the public model name: the versioned
    upstream name stays in the log (``detail``)."""
    error = upstream_error_from(status, content)
    if route.upstream_model != route.public_model and route.upstream_model in error.message:
        error.detail = error.message
        error.message = error.message.replace(route.upstream_model, route.public_model)
    return error
