"""The access log and the process's log format: one line per request, JSON or text.

:class:`AccessLog` writes what a finished :class:`~gateway.inference.record.RequestInfo` holds
(never prompts, completions or keys) on the ``gateway.access`` logger; the request middleware
calls it. Each access record carries its fields as a dict (:func:`access_fields`) and a
``key=value`` text message; the formatter picks one. Health and readiness polls and metric
scrapes (:data:`POLL_PATHS`) are logged at DEBUG, so at INFO they leave the log alone.

:func:`configure_logging` is the serve command's process-wide logging set-up: JSON lines
(:class:`JsonLogFormatter`, for log shippers) or readable text lines, time, level and message
(:class:`TextLogFormatter`, for people at a terminal); ``auto`` picks text on a TTY.

Every value a client chooses (``model``, the path) may hold newlines or terminal escapes: text
lines quote and escape them (:func:`quote_value`), JSON escapes them by itself, so one request
is always one line.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

from gateway.inference.record import RequestInfo
from gateway.settings import LogFormat

ACCESS_LOGGER = "gateway.access"
#: Libraries that log each HTTP call at INFO (the engine health polls would flood the log).
QUIET_LOGGERS = ("httpx", "httpcore")
#: Requests that machines repeat all day: logged at DEBUG, not INFO.
POLL_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
#: The attribute of an access record that holds its fields.
_FIELDS_ATTR = "access_fields"
#: Fields the text line leaves out (the line's own time stamp says when).
_TEXT_SKIP = frozenset({"event", "ts"})
_BARE_UNSAFE = frozenset(' "=\\')


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def quote_value(value: object) -> str:
    """``value`` as one token of a ``key=value`` line: bare when safe, else double-quoted with
    backslash escapes for quotes, backslashes and every non-printable character (newlines,
    carriage returns, ANSI escapes, Unicode line separators)."""
    text = str(value)
    if text and text.isprintable() and not any(ch in _BARE_UNSAFE for ch in text):
        return text
    return '"' + escape_text(text, quotes=True) + '"'


def escape_text(text: str, *, quotes: bool = False) -> str:
    """Backslash-escape what could end a log line or drive a terminal (and, inside a quoted
    value, quotes and backslashes)."""
    out: list[str] = []
    for ch in text:
        if quotes and ch in '"\\':
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def access_fields(record: logging.LogRecord) -> dict[str, Any] | None:
    """The fields of an access-log record; None for any other record."""
    fields = getattr(record, _FIELDS_ATTR, None)
    return fields if isinstance(fields, dict) else None


class AccessLog:
    """One line per request on the ``gateway.access`` logger; polls at DEBUG."""

    def __init__(
        self,
        *,
        logger: logging.Logger | None = None,
        quiet_paths: frozenset[str] = POLL_PATHS,
    ) -> None:
        self._logger = logger or logging.getLogger(ACCESS_LOGGER)
        self._quiet_paths = quiet_paths

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
            "gw_pre_ms": _ms(info.gateway_pre_s),
            "upstream_ttfb_ms": _ms(info.upstream_ttfb_s),
            "upstream_ms": _ms(info.upstream_s),
            "gw_post_ms": _ms(info.gateway_post_s),
            "model": info.model,
            "adapter": info.adapter,
            "engine": info.engine,
            "stream": info.stream,
            "prompt_tokens": info.prompt_tokens,
            "completion_tokens": info.completion_tokens,
            "error": info.error,
            "client_disconnected": info.client_disconnected,
        }

    def level(self, info: RequestInfo) -> int:
        return logging.DEBUG if info.path in self._quiet_paths else logging.INFO

    def emit(self, info: RequestInfo) -> None:
        level = self.level(info)
        if not self._logger.isEnabledFor(level):
            return
        fields = self.fields(info)
        self._logger.log(level, "%s", text_line(fields), extra={_FIELDS_ATTR: fields})


def text_line(fields: dict[str, Any]) -> str:
    """``key=value`` pairs, values quoted and escaped where needed; None values left out."""
    return " ".join(
        f"{key}={quote_value(value)}"
        for key, value in fields.items()
        if value is not None and key not in _TEXT_SKIP
    )


class JsonLogFormatter(logging.Formatter):
    """Every record as one JSON object per line; an access record is its fields."""

    def format(self, record: logging.LogRecord) -> str:
        fields = access_fields(record)
        if fields is not None:
            return json.dumps(fields, separators=(",", ":"))
        payload: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            payload["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(payload)


class TextLogFormatter(logging.Formatter):
    """``2026-12-03 06:51:57.123 INFO message``: the message escaped onto one line; a traceback,
    when there is one, follows on its own lines."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s.%(msecs)03d %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")

    def formatMessage(self, record: logging.LogRecord) -> str:
        original = record.message
        record.message = escape_text(original)
        try:
            return super().formatMessage(record)
        finally:
            record.message = original


class _CurrentStderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time, so a live progress display that
    redirects stderr (rich) prints log lines above itself instead of through it."""

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def use_json(log_format: LogFormat, stream: TextIO) -> bool:
    if log_format is LogFormat.AUTO:
        isatty = getattr(stream, "isatty", None)
        return not (callable(isatty) and isatty())
    return log_format is LogFormat.JSON


def configure_logging(
    level: str = "INFO",
    log_format: LogFormat = LogFormat.AUTO,
    *,
    stream: TextIO | None = None,
) -> bool:
    """Process-wide logging for ``lora-gateway serve``: one handler on ``stream`` (stderr) at
    ``level``; returns True when the lines are JSON.

    Called by the serve command, never by :func:`gateway.app.create_app` (tests keep their own
    logging). The serve command turns uvicorn's own logging config off, so uvicorn's records
    come here too. httpx logs every control-plane call (health polls, every 2 s) at INFO: it
    is held to WARNING.
    """
    json_lines = use_json(log_format, stream or sys.stderr)
    handler: logging.Handler = (
        logging.StreamHandler(stream) if stream is not None else _CurrentStderrHandler()
    )
    handler.setFormatter(JsonLogFormatter() if json_lines else TextLogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    return json_lines
