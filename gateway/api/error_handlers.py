"""Render every failure as an OpenAI-shaped JSON error; installed on the app by ``create_app``.

:class:`gateway.errors.GatewayError` renders itself (status, headers such as Retry-After, body);
an :class:`adapters.errors.AdapterError` is first given its status by
:func:`gateway.errors.from_adapter_error`.
A limited key's error answers get its x-ratelimit-* headers (:func:`gateway.api.deps.
limit_headers_for`) where its admission did not already add them.
FastAPI's request validation errors become 400 (not its default 422 body) and Starlette's HTTP
errors (unknown path 404, wrong method 405) take the same shape, their message naming the method
and path asked for (the app does not redirect a trailing slash: that path is unknown too).
Unexpected exceptions are caught by the request middleware (:mod:`gateway.api.middleware`), which
renders them with :func:`internal_error_response` after logging the traceback.
"""

from __future__ import annotations

import json
import re
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import Scope

from adapters.errors import AdapterError
from gateway.api.deps import limit_headers_for
from gateway.errors import GatewayError, InvalidRequestError, from_adapter_error, log_detail
from gateway.inference.record import request_info_of

MAX_ERROR_DETAILS = 5


def error_response(error: GatewayError) -> Response:
    return Response(
        content=json.dumps(error.to_dict()).encode(),
        status_code=error.status,
        headers=error.headers,
        media_type="application/json",
    )


def record_error(scope: Scope, error: GatewayError) -> None:
    """Note the error on the request's record (set up by the request middleware): its code for
    the access log, the error itself for metrics (engine failures are counted by kind); its
    ``detail``, which the client does not see, goes to the log with the request id."""
    info = request_info_of(scope)
    log_detail(error, info.request_id if info is not None else None)
    if info is not None:
        info.error = str(error.code or error.error_type)
        info.failure = error


def internal_error_response() -> Response:
    return error_response(GatewayError("internal server error"))


# pydantic puts the tried member of a union into ``loc`` ("str", "list[constrained-str]", ...);
# those are not part of the field's path.
_UNION_TAG = re.compile(r"[^A-Za-z0-9_]|^(str|int|float|bool|list|dict|none)$")


def _loc(loc: tuple[int | str, ...] | list[Any]) -> str:
    return ".".join(
        str(part)
        for part in loc
        if part != "body" and not (isinstance(part, str) and _UNION_TAG.search(part))
    )


def invalid_request_from(errors: list[Any]) -> InvalidRequestError:
    """One 400 naming the first few failed fields (``param`` is the first one's path)."""
    parts: list[str] = []
    for error in errors:
        where = _loc(error.get("loc", ()))
        part = f"{where}: {error.get('msg')}" if where else str(error.get("msg"))
        if part not in parts:
            parts.append(part)
    if len(parts) > MAX_ERROR_DETAILS:
        parts[MAX_ERROR_DETAILS:] = [f"... and {len(parts) - MAX_ERROR_DETAILS} more"]
    param = _loc(errors[0].get("loc", ())) if errors else None
    return InvalidRequestError("; ".join(parts) or "invalid request", param=param or None)


def validation_error(exc: ValidationError) -> InvalidRequestError:
    return invalid_request_from(exc.errors(include_url=False, include_input=False))


def _status_code_name(status: int) -> str | None:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return None


#: The longest piece of a client's path quoted back in an error message.
MAX_QUOTED_PATH = 256


def _http_error_message(request: Request, exc: HTTPException) -> str:
    """Starlette's bare "Not Found" / "Method Not Allowed" (no route matched) say, as OpenAI's
    own answer does, what was asked for; any other detail is kept."""
    status, detail = exc.status_code, str(exc.detail)
    if detail != HTTPStatus(status).phrase or status not in (404, 405):
        return detail
    path = request.url.path
    if len(path) > MAX_QUOTED_PATH:
        path = path[:MAX_QUOTED_PATH] + "..."
    asked = f"{request.method} {path}"
    if status == 404:
        return f"Invalid URL ({asked}): no such endpoint."
    allowed = (exc.headers or {}).get("Allow")
    return f"Method not allowed ({asked})" + (f"; allowed: {allowed}." if allowed else ".")


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    record_error(request.scope, exc)
    # A limited key's answers all carry its x-ratelimit-* headers: those its admission did not
    # add (a bad body, a model out of scope) are read as they stand.
    exc.headers.update(await limit_headers_for(request, {k.lower() for k in exc.headers}))
    return error_response(exc)


async def _adapter_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AdapterError)
    error = from_adapter_error(exc)
    record_error(request.scope, error)
    return error_response(error)


async def _request_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    error = invalid_request_from(list(exc.errors()))
    record_error(request.scope, error)
    return error_response(error)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    # FastAPI wraps errors raised while it reads a body (our body limit among them).
    if isinstance(exc.__cause__, GatewayError):
        record_error(request.scope, exc.__cause__)
        return error_response(exc.__cause__)
    status = exc.status_code
    body = {
        "error": {
            "message": _http_error_message(request, exc),
            "type": "invalid_request_error" if status < 500 else "internal_error",
            "param": None,
            "code": _status_code_name(status),
        }
    }
    if status in (204, 304):
        return Response(status_code=status, headers=exc.headers)
    return Response(
        content=json.dumps(body).encode(),
        status_code=status,
        headers=exc.headers,
        media_type="application/json",
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(GatewayError, _gateway_error)
    app.add_exception_handler(AdapterError, _adapter_error)
    app.add_exception_handler(RequestValidationError, _request_validation_error)
    app.add_exception_handler(HTTPException, _http_exception)
