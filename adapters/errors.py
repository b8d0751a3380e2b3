"""The errors of the adapters package: one class, a kind and a message, no HTTP status.

::

    AdapterError(kind, message, code=..., param=...)
      kind   AdapterErrorKind: what went wrong, in words a caller can act on
               INVALID      the adapter, its name or its path breaks the contract
               FORBIDDEN    the path resolves outside the allowed roots
               TOO_LARGE    over a size limit
               NOT_FOUND    no such adapter or version
               CONFLICT     the request disagrees with what is recorded (same name, other
                            content; a concurrent change)
               UNAVAILABLE  a service this package talks to cannot be reached (admin API)
               INTERNAL     the registry's database failed or is inconsistent
      code   a stable machine name of the failed check (``rank_exceeds_max``, ...), or None
      param  the request field at fault (``name``, ``path``, ``version``), or None

Raised by :mod:`adapters.validation`, :mod:`adapters.registry`, :mod:`adapters.store` and
:mod:`adapters.client`. Whoever serves them over HTTP chooses the status: the gateway does it
in one place, :func:`gateway.errors.from_adapter_error`. Nothing here imports the gateway.
"""

from __future__ import annotations

from enum import StrEnum


class AdapterErrorKind(StrEnum):
    INVALID = "invalid"
    FORBIDDEN = "forbidden"
    TOO_LARGE = "too_large"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


class AdapterError(Exception):
    """A failure of the adapter contract, registry, store or admin client."""

    def __init__(
        self,
        kind: AdapterErrorKind,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.code = code
        self.param = param

    def __repr__(self) -> str:
        return f"AdapterError({self.kind.value!r}, {self.message!r}, code={self.code!r})"
