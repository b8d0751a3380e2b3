"""Placement counters: what the placement policy decided, per engine, for the metrics.

Plain counters, no I/O. The lease path (:mod:`gateway.lifecycle.lease`) and the loader
(:mod:`gateway.lifecycle.loader`) count into the slot table's :class:`PlacementStats`; the
metrics collector (:mod:`gateway.observability.metrics`) reads them at scrape time as
``lora_gateway_placement_events_total{engine,event}``; the benchmark reads them through
``GET /metrics`` too.
"""

from __future__ import annotations

from collections import Counter
from enum import StrEnum


class PlacementEvent(StrEnum):
    #: An adapter request found its version resident on a ready engine.
    HIT = "resident_hit"
    #: It had to wait for a load (or a reload after an engine went away).
    MISS = "resident_miss"
    LOAD = "load"
    EVICTION = "eviction"
    #: A hot version copied onto one more engine.
    REPLICATION = "replication"
    #: A request retried on another engine after its engine failed before any byte.
    FAILOVER = "failover"


class PlacementStats:
    def __init__(self) -> None:
        self._counts: Counter[tuple[str, PlacementEvent]] = Counter()

    def count(self, engine: str, event: PlacementEvent) -> None:
        self._counts[(engine, event)] += 1

    def items(self) -> list[tuple[str, str, int]]:
        """(engine, event name, count), sorted."""
        return [(engine, event.value, n) for (engine, event), n in sorted(self._counts.items())]

    def total(self, event: PlacementEvent) -> int:
        return sum(n for (_, e), n in self._counts.items() if e is event)
