"""Placement policy: which engine serves a request, and where a cold adapter loads.

Pure functions of a :class:`Snapshot` (engines, what each holds, what each has in flight), with
no I/O and no clock, so a test can build a snapshot by hand. The slot table
(:mod:`gateway.placement.slots`) builds snapshots; the lease path (:mod:`gateway.lifecycle.lease`)
and the router (:mod:`gateway.inference.routing`) act on the answers.

Two policies (setting ``placement_policy``):

* ``replicate``: every adapter version is loaded on every ready engine (the baseline); the
  gateway's adapter capacity is the smallest engine's.
* ``affinity`` (default): a version lives on as few engines as its load needs; a request goes to
  the least loaded engine holding it; a cold version loads on the least loaded engine with a free
  slot (the emptier on a tie), else on the least loaded engine that can evict its stalest idle
  version; a hot version is copied onto a second engine once its in-flight requests on every
  engine holding it reach ``replicate_threshold``. The gateway's adapter capacity is the sum of
  the engines'.

Base-model requests go to the least loaded ready engine under either policy.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum


class PlacementPolicy(StrEnum):
    AFFINITY = "affinity"
    REPLICATE = "replicate"


@dataclass(frozen=True, slots=True)
class Victim:
    """An evictable version on one engine: loaded, idle, not pinned, not locked."""

    upstream: str
    last_used: float


@dataclass(frozen=True, slots=True)
class EngineView:
    name: str
    ready: bool
    #: Adapter versions it holds at once (vLLM's --max-cpu-loras).
    capacity: int
    #: The gateway's own requests in flight there (base model and adapters).
    in_flight: int = 0
    #: Versions loaded (current) or loading there.
    resident: frozenset[str] = frozenset()
    #: Upstream name -> this version's requests in flight on this engine.
    adapter_in_flight: Mapping[str, int] = field(default_factory=dict)
    victims: tuple[Victim, ...] = ()

    @property
    def free(self) -> int:
        return max(0, self.capacity - len(self.resident))


@dataclass(frozen=True, slots=True)
class Snapshot:
    engines: tuple[EngineView, ...]

    def ready(self, exclude: Collection[str] = ()) -> list[EngineView]:
        return [e for e in self.engines if e.ready and e.name not in exclude]


@dataclass(frozen=True, slots=True)
class LoadPlan:
    """Load on ``engine``, after evicting ``evict`` there (None: a slot is free)."""

    engine: str
    evict: str | None = None


def adapter_capacity(policy: PlacementPolicy, capacities: Sequence[int]) -> int:
    """How many adapter versions the gateway holds at once."""
    if not capacities:
        raise ValueError("no engine")
    return min(capacities) if policy is PlacementPolicy.REPLICATE else sum(capacities)


def _least_loaded(engines: Sequence[EngineView]) -> EngineView | None:
    # Ties go to the engine listed first (stable): deterministic for tests.
    return min(engines, key=lambda e: e.in_flight, default=None)


def choose_base_engine(snapshot: Snapshot, exclude: Collection[str] = ()) -> str | None:
    """The least loaded ready engine, or None when none is ready."""
    engine = _least_loaded(snapshot.ready(exclude))
    return engine.name if engine is not None else None


def choose_route(snapshot: Snapshot, upstream: str, exclude: Collection[str] = ()) -> str | None:
    """The least loaded ready engine where ``upstream`` is resident; None: a miss."""
    engine = _least_loaded([e for e in snapshot.ready(exclude) if upstream in e.resident])
    return engine.name if engine is not None else None


def choose_load(
    snapshot: Snapshot, upstream: str, exclude: Collection[str] = ()
) -> LoadPlan | None:
    """Where a cold ``upstream`` loads under ``affinity``: the least loaded ready engine with a
    free slot; else the least loaded engine with an evictable version (its stalest one); None
    when every slot of every ready engine is busy."""
    candidates = [e for e in snapshot.ready(exclude) if upstream not in e.resident]
    # Least loaded; between equally loaded ones the emptier, so adapters spread.
    free = min(
        (e for e in candidates if e.free > 0),
        key=lambda e: (e.in_flight, len(e.resident)),
        default=None,
    )
    if free is not None:
        return LoadPlan(free.name)
    with_victims = [e for e in candidates if e.victims]
    if not with_victims:
        return None
    engine = min(with_victims, key=lambda e: (e.in_flight, min(v.last_used for v in e.victims)))
    victim = min(engine.victims, key=lambda v: v.last_used)
    return LoadPlan(engine.name, evict=victim.upstream)


def choose_replica(snapshot: Snapshot, upstream: str, threshold: int) -> LoadPlan | None:
    """Copy a hot ``upstream`` onto another engine when, on every ready engine holding it, its
    own in-flight count has reached ``threshold``; None when it is not hot or nowhere fits."""
    holders = [e for e in snapshot.ready() if upstream in e.resident]
    if not holders or any(e.adapter_in_flight.get(upstream, 0) < threshold for e in holders):
        return None
    return choose_load(snapshot, upstream)


def replicate_targets(snapshot: Snapshot, upstream: str) -> list[str]:
    """Under ``replicate``: the ready engines that do not hold ``upstream`` yet."""
    return [e.name for e in snapshot.ready() if upstream not in e.resident]
