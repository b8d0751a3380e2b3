"""gateway.errors.from_adapter_error: each kind of adapters error gets its status and shape."""

from __future__ import annotations

import pytest

from adapters.errors import AdapterError, AdapterErrorKind
from gateway.errors import from_adapter_error


@pytest.mark.parametrize(
    ("kind", "status", "error_type"),
    [
        (AdapterErrorKind.INVALID, 400, "invalid_request_error"),
        (AdapterErrorKind.FORBIDDEN, 403, "permission_error"),
        (AdapterErrorKind.TOO_LARGE, 413, "invalid_request_error"),
        (AdapterErrorKind.NOT_FOUND, 404, "not_found_error"),
        (AdapterErrorKind.CONFLICT, 409, "conflict_error"),
        (AdapterErrorKind.UNAVAILABLE, 503, "service_unavailable"),
        (AdapterErrorKind.INTERNAL, 500, "internal_error"),
    ],
)
def test_each_kind_has_its_status(kind: AdapterErrorKind, status: int, error_type: str) -> None:
    error = from_adapter_error(AdapterError(kind, "why", code="the_check", param="path"))
    assert error.status == status
    assert error.to_dict() == {
        "error": {"message": "why", "type": error_type, "param": "path", "code": "the_check"}
    }


def test_every_kind_is_mapped() -> None:
    for kind in AdapterErrorKind:
        assert from_adapter_error(AdapterError(kind, "x")).status >= 400
