"""Failure cool-downs: which adapter versions failed to load, and when each may be tried again.

A failed adapter is not failed for good: the first request after its cool-down loads it again
(an admin ``load`` does at once). Within the cool-down requests get the failure without calling
the engine, so a bad adapter cannot turn every request into a load. The loader
(:mod:`gateway.lifecycle.loader`) records failures, the lease path
(:mod:`gateway.lifecycle.lease`) consults them, admin operations clear them, and views show them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from adapters.registry import AdapterVersion
from gateway.errors import AdapterLoadError, EngineUnavailableError, GatewayError


@dataclass(frozen=True, slots=True)
class LoadFailure:
    reason: str
    #: The engine refused the adapter (a 4xx): the version shows as FAILED. Otherwise the engine
    #: failed while loading it (a 5xx): the version stays REGISTERED.
    refused: bool
    #: Clock time from which a request, or the re-apply after an engine restart, tries again.
    retry_at: float


class LoadFailures:
    """Failed loads by upstream name, each with a cool-down before the next try."""

    def __init__(
        self, clock: Callable[[], float], *, refused_retry_s: float, error_retry_s: float
    ) -> None:
        self._clock = clock
        self._refused_retry_s = refused_retry_s
        self._error_retry_s = error_retry_s
        self._failures: dict[str, LoadFailure] = {}

    def record(
        self, upstream: str, reason: str, *, refused: bool, retry_now: bool = False
    ) -> LoadFailure:
        delay = 0.0 if retry_now else self._refused_retry_s if refused else self._error_retry_s
        failure = LoadFailure(reason, refused, self._clock() + delay)
        self._failures[upstream] = failure
        return failure

    def get(self, upstream: str) -> LoadFailure | None:
        return self._failures.get(upstream)

    def clear(self, upstream: str) -> None:
        self._failures.pop(upstream, None)

    def remaining_s(self, upstream: str) -> float:
        """Seconds left of ``upstream``'s cool-down; 0 when it may be tried (or never failed)."""
        failure = self._failures.get(upstream)
        return 0.0 if failure is None else max(0.0, failure.retry_at - self._clock())

    def check(self, version: AdapterVersion) -> None:
        """Raise the answer for ``version`` if it failed and is still cooling down."""
        failure = self._failures.get(version.upstream_name)
        wait_s = self.remaining_s(version.upstream_name)
        if failure is not None and wait_s > 0:
            raise still_failed(version, failure, wait_s)


def still_failed(version: AdapterVersion, failure: LoadFailure, wait_s: float) -> GatewayError:
    """The answer to a request for an adapter whose last load failed, within its cool-down:
    the public name for the client, the engine's reason for the log."""
    retry_after = max(1, math.ceil(wait_s))
    if failure.refused:
        return AdapterLoadError(
            f"adapter {version.name!r} failed to load; a request after {retry_after} s tries "
            f"again (POST /admin/adapters/{version.name}/load to retry now)",
            code="adapter_load_failed",
            headers={"Retry-After": str(retry_after)},
            detail=f"{version.upstream_name}: {failure.reason}",
        )
    return EngineUnavailableError(
        f"adapter {version.name!r} could not be loaded just now; retry in {retry_after} s",
        retry_after_s=retry_after,
        detail=f"{version.upstream_name}: {failure.reason}",
    )
