"""The per-request record of the data plane, and the hook metrics plug into.

The request middleware (:mod:`gateway.api.middleware`) creates one :class:`RequestInfo` per
HTTP request and keeps it in the ASGI scope; the OpenAI routes and the proxy fill in what they
learn (model, adapter, engine, stream flag, token counts). When the response is finished the
middleware hands it to the access log (:mod:`gateway.observability.access_log`) and to the
app's :class:`RequestObserver`. The request metrics implement that protocol;
:class:`NullObserver` is the default. Prompts, completions and keys are never recorded here.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.errors import GatewayError

#: Where the request's :class:`RequestInfo` lives in the ASGI scope's ``state``.
SCOPE_STATE_KEY = "request_info"


@dataclass(slots=True)
class RequestInfo:
    """What the gateway knows about one request; filled in as it goes."""

    request_id: str
    method: str
    path: str
    #: ``time.perf_counter()`` at arrival, at the first response body byte, at the end.
    started: float
    first_byte: float | None = None
    finished: float | None = None
    #: ``time.perf_counter()`` when the proxy sent the request to the engine, when the engine's
    #: status line and headers arrived, and when its body ended. The gateway's own time is
    #: before the first (``gateway_pre``) and after the last (``gateway_post``).
    upstream_sent: float | None = None
    upstream_first_byte: float | None = None
    upstream_last_byte: float | None = None
    status: int = 0
    model: str | None = None
    adapter: str | None = None
    engine: str | None = None
    stream: bool = False
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    #: The error ``code`` (or type) when the gateway answered with an error.
    error: str | None = None
    #: That error itself (metrics count engine failures by kind); also set when a stream
    #: broke after its headers went out (the status then stays 200).
    failure: GatewayError | None = None
    #: The client went away before the response was complete.
    client_disconnected: bool = False

    @property
    def latency_ms(self) -> float | None:
        return None if self.finished is None else (self.finished - self.started) * 1000.0

    @property
    def ttfb_ms(self) -> float | None:
        return None if self.first_byte is None else (self.first_byte - self.started) * 1000.0

    @property
    def gateway_pre_s(self) -> float | None:
        """The gateway's time before the engine had the request: parsing, auth, routing (an
        adapter load it waited for included)."""
        return None if self.upstream_sent is None else self.upstream_sent - self.started

    @property
    def upstream_ttfb_s(self) -> float | None:
        """The engine's time to its first byte (status line and headers)."""
        if self.upstream_sent is None or self.upstream_first_byte is None:
            return None
        return self.upstream_first_byte - self.upstream_sent

    @property
    def upstream_s(self) -> float | None:
        """The engine's whole time, request sent to last body byte."""
        if self.upstream_sent is None or self.upstream_last_byte is None:
            return None
        return self.upstream_last_byte - self.upstream_sent

    @property
    def gateway_post_s(self) -> float | None:
        """The gateway's time after the engine's last byte, until the client had the end."""
        if self.upstream_last_byte is None or self.finished is None:
            return None
        return self.finished - self.upstream_last_byte


def request_info_of(scope: MutableMapping[str, Any]) -> RequestInfo | None:
    """The record the request middleware attached to this ASGI scope, if any."""
    info = scope.get("state", {}).get(SCOPE_STATE_KEY)
    return info if isinstance(info, RequestInfo) else None


class RequestObserver(Protocol):
    """Hook points for metrics; called on the event loop, so they must be quick.

    ``request_started`` when a request arrives (only its id, method and path are known);
    ``stream_event`` for each SSE event sent to the client of a streamed completion (after the
    model name was rewritten; timing per event gives time to first token and inter-token
    latency); ``request_finished`` once the response is complete or the client left, with
    status, model, adapter, timings and token counts filled in.
    """

    def request_started(self, info: RequestInfo) -> None: ...

    def stream_event(self, info: RequestInfo, event: bytes) -> None: ...

    def request_finished(self, info: RequestInfo) -> None: ...


class NullObserver:
    """The observer used until the metrics module provides one."""

    def request_started(self, info: RequestInfo) -> None:
        return None

    def stream_event(self, info: RequestInfo, event: bytes) -> None:
        return None

    def request_finished(self, info: RequestInfo) -> None:
        return None
