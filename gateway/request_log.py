"""The per-request record, its one structured log line, and the hook metrics plug into.

The request middleware (:mod:`gateway.api.middleware`) creates one :class:`RequestInfo` per
HTTP request and keeps it in the ASGI scope; the OpenAI routes and the proxy fill in what they
learn (model, adapter, engine, stream flag, token counts). When the response is finished the
middleware hands it to :class:`AccessLog` (one JSON line on the ``gateway.access`` logger) and
to the app's :class:`RequestObserver`. The metrics module implements that protocol;
:class:`NullObserver` is the default. Prompts, completions and keys are never recorded here.
:func:`configure_logging` (for the serve command) writes every record as a JSON line.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.errors import GatewayError

ACCESS_LOGGER = "gateway.access"
#: Libraries that log each HTTP call at INFO (the engine health polls would flood the log).
QUIET_LOGGERS = ("httpx", "httpcore")
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


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


class AccessLog:
    """One line per request on the ``gateway.access`` logger: JSON, or ``key=value`` text."""

    def __init__(self, *, json_lines: bool = True, logger: logging.Logger | None = None) -> None:
        self._json = json_lines
        self._logger = logger or logging.getLogger(ACCESS_LOGGER)

    def fields(self, info: RequestInfo) -> dict[str, Any]:
        return {
            "event": "request",
            "ts": round(time.time(), 3),
            "request_id": info.request_id,
            "method": info.method,
            "path": info.path,
            "status": info.status,
            "latency_ms": _round(info.latency_ms),
            "ttfb_ms": _round(info.ttfb_ms),
            "model": info.model,
            "adapter": info.adapter,
            "engine": info.engine,
            "stream": info.stream,
            "prompt_tokens": info.prompt_tokens,
            "completion_tokens": info.completion_tokens,
            "error": info.error,
            "client_disconnected": info.client_disconnected,
        }

    def emit(self, info: RequestInfo) -> None:
        if not self._logger.isEnabledFor(logging.INFO):
            return
        fields = self.fields(info)
        if self._json:
            line = json.dumps(fields, separators=(",", ":"))
        else:
            line = " ".join(f"{key}={value}" for key, value in fields.items() if value is not None)
        self._logger.info(line)


class JsonLogFormatter(logging.Formatter):
    """Every record as one JSON object per line; access lines (already JSON) pass as they are."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.name == ACCESS_LOGGER and message.startswith("{"):
            return message
        payload: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        if record.exc_info:
            payload["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(payload)


def configure_logging(level: str = "INFO", *, json_lines: bool = True) -> None:
    """Process-wide logging for ``lora-gateway serve``: one handler on stderr at ``level``.

    Called by the serve command, never by :func:`gateway.app.create_app` (tests keep their own
    logging). The serve command turns uvicorn's own logging config off, so uvicorn's records
    come here too. httpx logs every control-plane call (health polls, every 2 s) at INFO: it
    is held to WARNING.
    """
    handler = logging.StreamHandler()
    if json_lines:
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
