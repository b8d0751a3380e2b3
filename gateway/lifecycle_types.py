"""The adapter lifecycle's seam to metrics and the plain views it hands out.

:class:`LifecycleObserver` is the hook the lifecycle calls on every load, unload, eviction and
load failure (``gateway.metrics.AdapterEventRecorder`` implements it; the default does
nothing); :class:`LifecycleStats` are the same events counted in process. :class:`AdapterView`
is an adapter as the admin API renders it (:mod:`gateway.api.admin_schemas`): its registry
record plus the live state of each version.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from adapters.registry import AdapterRecord, AdapterVersion
from adapters.state import AdapterState


class LifecycleObserver(Protocol):
    """Hook points for metrics (``gateway.metrics.AdapterEventRecorder`` implements them).

    ``on_unload`` is called for every unload, ``on_evict`` in addition when it made room.
    """

    def on_load(self, name: str, seconds: float) -> None: ...
    def on_unload(self, name: str) -> None: ...
    def on_evict(self, name: str) -> None: ...
    def on_load_failed(self, name: str) -> None: ...


class NullLifecycleObserver:
    def on_load(self, name: str, seconds: float) -> None:
        pass

    def on_unload(self, name: str) -> None:
        pass

    def on_evict(self, name: str) -> None:
        pass

    def on_load_failed(self, name: str) -> None:
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
