"""Request metrics: the app's :class:`~gateway.inference.record.RequestObserver`, feeding
GatewayMetrics.

``create_app`` hands a :class:`RequestMetricsObserver` to the request middleware
(:mod:`gateway.api.middleware`), which calls ``request_started`` when a request arrives,
``stream_event`` for each SSE event sent to a streaming client (via the proxy) and
``request_finished`` with the filled-in :class:`~gateway.inference.record.RequestInfo`. Only the
OpenAI inference paths are counted; ``/metrics``, health checks and the admin API are not.

A client that left before its response was complete is counted with ``status_code="499"``
(nginx's convention), whatever status its response had started with. An engine failure (the
request's ``failure``, set by the error handlers and by the proxy when a stream breaks) is also
counted in ``upstream_errors`` by kind: a stream that broke after its headers went out is
``stream_broken``. The gateway's own time before the engine had the request and after its last
byte goes to ``overhead_seconds`` by phase.
"""

from __future__ import annotations

import time
from collections.abc import Collection

from gateway.errors import EngineError, GatewayError
from gateway.inference.record import RequestInfo
from gateway.observability.metrics import (
    GatewayMetrics,
    RequestChildren,
    UpstreamErrorKind,
    upstream_error_kind,
)

INFERENCE_PATHS = frozenset(
    {"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages"}
)
CLIENT_CLOSED = "499"
#: Bound on requests tracked at once; a request never finished (a bug elsewhere) cannot make
#: the table grow without end.
MAX_TRACKED = 100_000


#: Text deltas of a Responses API stream and of an Anthropic Messages stream.
_DELTA_TYPES = (b'"response.output_text.delta"', b'"text_delta"')


def is_token_event(event: bytes) -> bool:
    """Whether an SSE event carries generated tokens (not usage, [DONE], an error or the role).

    Byte tests only: this runs for every token of every stream. vLLM writes compact JSON; the
    role-only first chunk of a chat stream comes with its first token, so skipping it keeps a
    ~0 s gap out of the inter-token histogram without moving time to first token.
    """
    if _DELTA_TYPES[0] in event or _DELTA_TYPES[1] in event:  # Responses / Messages API
        return True
    if b'"choices"' not in event or b'"choices": []' in event or b'"choices":[]' in event:
        return False
    return not (b'"role"' in event and b'"content":""' in event)


class _Tracked:
    __slots__ = ("children", "last_token")

    def __init__(self) -> None:
        self.children: RequestChildren | None = None
        self.last_token: float | None = None


class RequestMetricsObserver:
    """Implements :class:`gateway.inference.record.RequestObserver` on a :class:`GatewayMetrics`."""

    def __init__(self, metrics: GatewayMetrics, paths: Collection[str] = INFERENCE_PATHS) -> None:
        self.metrics = metrics
        self._paths = frozenset(paths)
        self._in_flight = metrics.in_flight
        # Keyed by id(): RequestInfo is a slots dataclass (no weakrefs); the entry holds the
        # info itself, so its id cannot be reused while tracked.
        self._tracked: dict[int, tuple[RequestInfo, _Tracked]] = {}

    def request_started(self, info: RequestInfo) -> None:
        if info.path not in self._paths or len(self._tracked) >= MAX_TRACKED:
            return
        self._tracked[id(info)] = (info, _Tracked())
        self._in_flight.inc()

    def stream_event(self, info: RequestInfo, event: bytes) -> None:
        entry = self._tracked.get(id(info))
        if entry is None or not is_token_event(event):
            return
        tracked = entry[1]
        now = time.perf_counter()
        if tracked.last_token is None:
            tracked.children = self.metrics.children_for(self.metrics.labels_for(info.model))
            tracked.children.first_token.observe(now - info.started)
        elif tracked.children is not None:
            tracked.children.inter_token.observe(now - tracked.last_token)
        tracked.last_token = now

    def request_finished(self, info: RequestInfo) -> None:
        entry = self._tracked.pop(id(info), None)
        if entry is None:
            return
        self._in_flight.dec()
        children = entry[1].children or self.metrics.children_for(
            self.metrics.labels_for(info.model)
        )
        status = CLIENT_CLOSED if info.client_disconnected else str(info.status)
        children.requests(status).inc()
        finished = info.finished if info.finished is not None else time.perf_counter()
        children.duration.observe(finished - info.started)
        if info.prompt_tokens is not None:
            children.prompt.inc(info.prompt_tokens)
        if info.completion_tokens is not None:
            children.completion.inc(info.completion_tokens)
        pre, post = info.gateway_pre_s, info.gateway_post_s
        if pre is not None:
            self.metrics.overhead_pre.observe(pre)
        if post is not None:
            self.metrics.overhead_post.observe(post)
        if info.failure is not None:
            kind = failure_kind(info, info.failure)
            if kind is not None:
                self.metrics.upstream_error(kind)


def failure_kind(info: RequestInfo, failure: GatewayError) -> UpstreamErrorKind | None:
    """The upstream-error kind of a failed request; None for errors the gateway made itself."""
    if info.stream and info.status == 200:  # the headers went out: the engine's stream broke
        return UpstreamErrorKind.STREAM_BROKEN if isinstance(failure, EngineError) else None
    return upstream_error_kind(failure)
