"""The access log and the process's log format: one line per request, JSON or text.

:class:`AccessLog` writes what a finished :class:`~gateway.inference.record.RequestInfo` holds
(never prompts, completions or keys) on the ``gateway.access`` logger; the request middleware
calls it. :func:`configure_logging` is the serve command's process-wide logging set-up.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from gateway.inference.record import RequestInfo

ACCESS_LOGGER = "gateway.access"
#: Libraries that log each HTTP call at INFO (the engine health polls would flood the log).
QUIET_LOGGERS = ("httpx", "httpcore")


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


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
