"""The adapter lifecycle's seam to metrics and the plain views it hands out.

:class:`LifecycleObserver` is the hook the lifecycle calls on every load, unload, eviction and
load failure (``gateway.observability.metrics.AdapterEventRecorder`` implements it; the default
does nothing). :class:`AdapterView` is an adapter as the admin API renders it
(:mod:`gateway.api.admin.protocol`): its registry record plus the live state of each version.
"""

from __future__ import annotations

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


@dataclass(frozen=True, slots=True)
class VersionView:
    version: AdapterVersion
    state: AdapterState
    last_error: str | None
    leases: int
    engines: tuple[str, ...]

    @classmethod
    def of(
        cls,
        version: AdapterVersion,
        live: AdapterState | None,
        failure: str | None,
        *,
        refused: bool,
        leases: int,
        engines: tuple[str, ...],
    ) -> VersionView:
        """``live``: the state of its slot, if it has one; ``failure``: its last failed load,
        if still remembered (``refused`` by the engine: shown as FAILED)."""
        state = (
            live
            if live is not None
            else AdapterState.FAILED
            if failure is not None and refused
            else AdapterState.REGISTERED
        )
        last_error = failure if failure is not None else version.last_error
        return cls(version, state, last_error, leases, engines)


@dataclass(frozen=True, slots=True)
class AdapterView:
    """An adapter as the admin API shows it: registry record plus live state."""

    record: AdapterRecord
    versions: tuple[VersionView, ...]

    @property
    def active(self) -> VersionView:
        return next(v for v in self.versions if v.version.version == self.record.active_version)
