"""The one error hierarchy of the project, rendered the OpenAI way.

Every failure a client, an operator or the trainer can see is a :class:`GatewayError`. Each
carries its HTTP status and renders as ``{"error": {"message", "type", "param", "code"}}``: as a
JSON response before any byte was sent, or as a final SSE event once a stream has started, so
both share one vocabulary.

    GatewayError                      500 internal_error
    ├── InvalidRequestError           400 invalid_request_error
    │   └── AdapterValidationError    400 invalid_request_error (names the failed check)
    ├── AuthenticationError           401 authentication_error
    ├── PermissionDeniedError         403 permission_error
    ├── NotFoundError                 404 not_found_error
    │   ├── ModelNotFoundError        404 code=model_not_found
    │   ├── AdapterNotFoundError      404 code=adapter_not_found
    │   └── ResponseNotFoundError     404 code=response_not_found (no engine of ours made it)
    ├── ConflictError                 409 conflict_error
    ├── PayloadTooLargeError          413 invalid_request_error code=payload_too_large
    ├── NotSupportedError             501 the engines cannot do this (e.g. delete a response)
    ├── RateLimitError                429 code=rate_limit_exceeded (with Retry-After)
    │   └── QuotaExceededError        429 insufficient_quota (a spent token budget)
    ├── CapacityError                 429/503 when no adapter slot can be freed
    ├── ServiceUnavailableError       503 a service behind the gateway cannot be reached
    ├── EngineError                   engine-side failures
    │   ├── EngineUnavailableError    503 (with Retry-After)
    │   ├── UpstreamTimeoutError      504
    │   └── UpstreamHTTPError         the engine's own 4xx/5xx, passed through
    └── AdapterLoadError              502 the engine refused to load an adapter

Lower libraries' exceptions (httpx, SQLAlchemy, OS errors) are translated into these with
``raise ... from exc`` at the module that talks to that library. The ``adapters`` package has
its own errors (a kind, no status); :func:`from_adapter_error` is the one place that gives them
a status, used by the app's error handler and by any gateway code that reports one.

A client sees ``message``: public names and a short reason. What only an operator should see
(versioned upstream names, slot states, file paths, an engine's own words) goes in ``detail``,
which is never rendered: :func:`log_detail` writes it to the log at WARNING with the request id.
"""

from __future__ import annotations

import json
import logging
from typing import Any, ClassVar

from adapters.errors import AdapterError, AdapterErrorKind

logger = logging.getLogger(__name__)


class GatewayError(Exception):
    """Base of every error the project reports to a user."""

    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "internal_error"
    default_code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | int | None = None,
        headers: dict[str, str] | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = dict(headers or {})
        #: For the log only, never for the client (see the module docstring).
        self.detail = detail

    @property
    def status(self) -> int:
        return self.status_code

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }

    def to_sse(self) -> bytes:
        """The final event of a stream that failed after its headers went out."""
        return b"data: " + json.dumps(self.to_dict()).encode() + b"\n\n"


class InvalidRequestError(GatewayError):
    status_code = 400
    error_type = "invalid_request_error"


class AdapterValidationError(InvalidRequestError):
    """An adapter failed a preflight check; ``code`` names the check."""


class AuthenticationError(GatewayError):
    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class PermissionDeniedError(GatewayError):
    status_code = 403
    error_type = "permission_error"


class NotFoundError(GatewayError):
    status_code = 404
    error_type = "not_found_error"


class ModelNotFoundError(NotFoundError):
    error_type = "invalid_request_error"
    default_code = "model_not_found"


class AdapterNotFoundError(NotFoundError):
    default_code = "adapter_not_found"


class ResponseNotFoundError(NotFoundError):
    """A Responses API id that names no engine of this gateway."""

    default_code = "response_not_found"


class NotSupportedError(GatewayError):
    status_code = 501
    error_type = "not_implemented"
    default_code = "not_implemented"


class ConflictError(GatewayError):
    status_code = 409
    error_type = "conflict_error"


class PayloadTooLargeError(GatewayError):
    status_code = 413
    error_type = "invalid_request_error"
    default_code = "payload_too_large"


class RateLimitError(GatewayError):
    """A key is over one of its limits; ``Retry-After`` says when to come back.

    ``type`` says which limit, as OpenAI does: ``requests`` or ``tokens``.
    """

    status_code = 429
    error_type = "requests"
    default_code = "rate_limit_exceeded"

    def __init__(
        self, message: str, *, retry_after_s: int, kind: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(message, **kwargs)
        self.kind = kind or self.error_type
        self.headers.setdefault("Retry-After", str(max(1, retry_after_s)))

    def to_dict(self) -> dict[str, Any]:
        body = super().to_dict()
        body["error"]["type"] = self.kind
        return body


class QuotaExceededError(RateLimitError):
    error_type = "insufficient_quota"
    default_code = "insufficient_quota"


class CapacityError(GatewayError):
    """Every adapter slot is pinned or busy, so the requested adapter cannot be loaded now."""

    status_code = 503
    error_type = "capacity_error"
    default_code = "adapter_capacity_exhausted"


class ServiceUnavailableError(GatewayError):
    status_code = 503
    error_type = "service_unavailable"
    default_code = "service_unavailable"


class EngineError(GatewayError):
    status_code = 502
    error_type = "upstream_error"


class EngineUnavailableError(EngineError):
    status_code = 503
    error_type = "engine_unavailable"
    default_code = "engine_unavailable"

    def __init__(self, message: str, *, retry_after_s: int = 5, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.headers.setdefault("Retry-After", str(retry_after_s))


class UpstreamTimeoutError(EngineError):
    status_code = 504
    error_type = "timeout_error"
    default_code = "upstream_timeout"


class UpstreamHTTPError(EngineError):
    """The engine answered with an error status: passed through with its own message."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str | None = None,
        param: str | None = None,
        code: str | int | None = None,
    ) -> None:
        super().__init__(message, param=param, code=code)
        self._status = status
        self._type = error_type or ("invalid_request_error" if status < 500 else "upstream_error")

    @property
    def status(self) -> int:
        return self._status

    def to_dict(self) -> dict[str, Any]:
        body = super().to_dict()
        body["error"]["type"] = self._type
        return body


class AdapterLoadError(GatewayError):
    status_code = 502
    error_type = "adapter_load_error"


_ADAPTER_ERRORS: dict[AdapterErrorKind, type[GatewayError]] = {
    AdapterErrorKind.INVALID: AdapterValidationError,
    AdapterErrorKind.FORBIDDEN: PermissionDeniedError,
    AdapterErrorKind.TOO_LARGE: PayloadTooLargeError,
    AdapterErrorKind.NOT_FOUND: AdapterNotFoundError,
    AdapterErrorKind.CONFLICT: ConflictError,
    AdapterErrorKind.UNAVAILABLE: ServiceUnavailableError,
    AdapterErrorKind.INTERNAL: GatewayError,
}


def from_adapter_error(error: AdapterError) -> GatewayError:
    """The gateway's error (status, OpenAI type) for an adapters-package error of that kind."""
    return _ADAPTER_ERRORS[error.kind](error.message, param=error.param, code=error.code)


def log_detail(error: GatewayError, request_id: str | None) -> None:
    """Log what a client was not shown of ``error``, under its request id (if it has detail)."""
    if error.detail:
        logger.warning(
            "request %s: %s (%s): %s",
            request_id or "-",
            error.message,
            error.code or error.error_type,
            error.detail,
        )
