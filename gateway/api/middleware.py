"""The one ASGI middleware around every request: id, body limit, last-resort 500, log line.

Installed by :func:`gateway.app.create_app` (plain ASGI, not ``BaseHTTPMiddleware``: the hot path
pays for one closure, not a task). For each HTTP request it

* takes the client's ``x-request-id`` when it is sane (bounded length and charset) or makes one,
  and puts it on every response, errors and streams included;
* adds ``Server-Timing`` to every answer the engine gave
  (:mod:`gateway.observability.server_timing`);
* enforces ``max_body_bytes``: a declared Content-Length over the limit is refused before the
  body is read, and a chunked body is counted while it is read (413 either way);
* turns an unexpected exception into a 500 in the OpenAI shape, logged with its traceback;
* creates the :class:`~gateway.inference.record.RequestInfo` that routes fill in, and when the
  response is complete writes the access-log line and calls the request observer.
"""

from __future__ import annotations

import logging
import os
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adapters.errors import AdapterError
from gateway.api.error_handlers import error_response, internal_error_response, record_error
from gateway.errors import (
    GatewayError,
    InvalidRequestError,
    PayloadTooLargeError,
    from_adapter_error,
)
from gateway.inference.record import SCOPE_STATE_KEY, RequestInfo, RequestObserver
from gateway.observability.access_log import AccessLog
from gateway.observability.server_timing import server_timing_header

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = b"x-request-id"
_SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        access_log: AccessLog,
        observer: RequestObserver,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.access_log = access_log
        self.observer = observer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        request_id: bytes | None = None
        content_length: bytes | None = None
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER:
                request_id = value
            elif name == b"content-length":
                content_length = value
        if request_id is None or not _SANE_REQUEST_ID.fullmatch(request_id):
            request_id = os.urandom(16).hex().encode()  # uuid4().hex's form, 4x cheaper

        info = RequestInfo(
            request_id=request_id.decode(),
            method=scope["method"],
            path=scope["path"],
            started=time.perf_counter(),
        )
        scope.setdefault("state", {})[SCOPE_STATE_KEY] = info
        self.observer.request_started(info)
        id_header = (REQUEST_ID_HEADER, request_id)
        response_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
                info.status = message["status"]
                timing = server_timing_header(info)
                extra = (id_header,) if timing is None else (id_header, timing)
                message["headers"] = [*message.get("headers", ()), *extra]
            elif info.first_byte is None and message["type"] == "http.response.body":
                info.first_byte = time.perf_counter()
            await send(message)

        limit = self.max_body_bytes
        received = 0

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLargeError(f"request body is over the {limit}-byte limit")
            return message

        try:
            early = self._check_content_length(content_length)
            if early is not None:
                record_error(scope, early)
                await error_response(early)(scope, receive, send_with_id)
            else:
                await self.app(scope, receive_limited, send_with_id)
        except Exception as exc:
            if response_started:
                logger.exception("request %s failed after its response started", info.request_id)
                raise
            if isinstance(exc, AdapterError):
                exc = from_adapter_error(exc)
            if isinstance(exc, GatewayError):
                record_error(scope, exc)
                await error_response(exc)(scope, receive, send_with_id)
            else:
                logger.exception("unhandled error in request %s", info.request_id)
                info.error = "internal_error"
                await internal_error_response()(scope, receive, send_with_id)
        finally:
            info.finished = time.perf_counter()
            self.access_log.emit(info)
            self.observer.request_finished(info)

    def _check_content_length(self, value: bytes | None) -> GatewayError | None:
        if value is None:
            return None
        try:
            declared = int(value)
        except ValueError:
            return InvalidRequestError("Content-Length is not an integer")
        if declared > self.max_body_bytes:
            return PayloadTooLargeError(
                f"request body of {declared} bytes is over the {self.max_body_bytes}-byte limit"
            )
        return None
