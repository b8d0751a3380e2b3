"""The adapter lifecycle's seam to metrics and the plain views it hands out.

:class:`LifecycleObserver` is the hook the lifecycle calls on every load, unload, eviction and
load failure (``gateway.observability.metrics.AdapterEventRecorder`` implements it; the default does
nothing); :class:`LifecycleStats` are the same events counted in process. :class:`AdapterView`
is an adapter as the admin API renders it (:mod:`gateway.api.admin.protocol`): its registry
record plus the live state of each version. :class:`LoadFailures` remembers failed loads and when
each may be tried again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from adapters.registry import AdapterRecord, AdapterVersion
from adapters.state import AdapterState


class LifecycleObserver(Protocol):
    """Hook points for metrics (``gateway.observability.metrics.AdapterEventRecorder`` implements
    them).

    ``on_unload`` is called for every unload, ``on_evict`` in addition when it made room;
    ``on_delete`` once an adapter left the registry (its metric series can go).
    """

    def on_load(self, name: str, seconds: float) -> None: ...
    def on_unload(self, name: str) -> None: ...
    def on_evict(self, name: str) -> None: ...
    def on_load_failed(self, name: str) -> None: ...
    def on_delete(self, name: str) -> None: ...


class NullLifecycleObserver:
    def on_load(self, name: str, seconds: float) -> None:
        pass

    def on_unload(self, name: str) -> None:
        pass

    def on_evict(self, name: str) -> None:
        pass

    def on_load_failed(self, name: str) -> None:
        pass

    def on_delete(self, name: str) -> None:
        pass


class UnloadCause(StrEnum):
    REQUESTED = "requested"  # admin unload
    EVICTED = "evicted"  # made room for another adapter
    REPLACED = "replaced"  # an old version after a swap, once drained
    DELETED = "deleted"


@dataclass(slots=True)
class LifecycleStats:
    """Counters since start (the metrics observer exports the same events to Prometheus)."""

    loads: int = 0
    unloads: int = 0
    evictions: int = 0
    load_failures: int = 0
    load_seconds_total: float = 0.0
    load_seconds_max: float = 0.0


@dataclass(frozen=True, slots=True)
class VersionView:
    version: AdapterVersion
    state: AdapterState
    last_error: str | None
    leases: int
    engines: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AdapterView:
    """An adapter as the admin API shows it: registry record plus live state."""

    record: AdapterRecord
    versions: tuple[VersionView, ...]

    @property
    def active(self) -> VersionView:
        return next(v for v in self.versions if v.version.version == self.record.active_version)


@dataclass(frozen=True, slots=True)
class LoadFailure:
    reason: str
    #: The engine refused the adapter (a 4xx): the version shows as FAILED. Otherwise the engine
    #: failed while loading it (a 5xx): the version stays REGISTERED.
    refused: bool
    #: Clock time from which a request, or the re-apply after an engine restart, tries again.
    retry_at: float


class LoadFailures:
    """Failed loads by upstream name, each with a cool-down before the next try.

    A failed adapter is not failed for good: the first request after its cool-down loads it
    again (an admin ``load`` does at once). Within the cool-down, requests get the failure
    without calling the engine, so a bad adapter cannot turn every request into a load.
    """

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
