"""Routing: turn the ``model`` of a client request into (engine, upstream model, adapter).

Knows nothing of HTTP. The base model's id routes to a ready engine directly (the least loaded
by the gateway's own in-flight count, :func:`gateway.placement.policy.choose_base_engine`; ties
rotate); any other id must be a registered adapter name, resolved through an
:class:`AdapterResolver` (the adapter lifecycle in :mod:`gateway.lifecycle.service`), which makes
sure the adapter is loaded on an engine and holds it there (no eviction, no unload) until the
request's lease is released. Never a raw path. Used by :mod:`gateway.inference.proxy` (``route``)
and the ``/v1/models`` route (``public_models``).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any, Protocol

from adapters.registry import AliasTarget
from gateway.engines.base import Engine
from gateway.errors import EngineUnavailableError, ModelNotFoundError
from gateway.inference.aliases import AliasBook
from gateway.inference.sampling import SamplingDefaults, layered
from gateway.placement.policy import EngineView, Snapshot, choose_base_engine
from gateway.placement.slots import EngineLoad
from gateway.placement.stats import PlacementEvent, PlacementStats


@dataclass(frozen=True, slots=True)
class Route:
    engine: Engine
    #: The model name the engine knows: the base's served name, or the adapter's versioned
    #: upstream LoRA name.
    upstream_model: str
    #: What the client asked for (and sees back in responses).
    public_model: str
    #: Registered adapter name, or None for the base model.
    adapter: str | None
    #: Sampling for requests that leave it out (:mod:`gateway.inference.sampling`).
    sampling_defaults: SamplingDefaults | None = None
    #: The adapter version leased (None for the base model).
    version: int | None = None
    #: The alias the request named, and the target it was given (None: no alias).
    alias_target: AliasTarget | None = None


@dataclass(frozen=True, slots=True)
class PublicModel:
    """One entry of ``GET /v1/models``."""

    id: str
    created: int
    owned_by: str
    #: For an adapter: its base model's id. None for a base model.
    parent: str | None
    root: str | None = None


class AdapterResolver(Protocol):
    def lease(
        self,
        name: str,
        *,
        engine: str | None = None,
        version: int | None = None,
        exclude: Collection[str] = (),
    ) -> AbstractAsyncContextManager[Route]:
        """Hold adapter ``name`` loaded for one request; ModelNotFoundError if not registered.

        ``engine``: the request must run there (it continues a response that engine stored).
        ``version``: that version (an alias's target) instead of the active one.
        ``exclude``: engines it must not run on (they just failed it: failover).
        """
        ...

    def public_models(self) -> list[PublicModel]:
        """Every servable registered adapter."""
        ...


def unknown_model(name: str) -> ModelNotFoundError:
    return ModelNotFoundError(f"The model `{name}` does not exist.", param="model")


class Router:
    def __init__(
        self,
        engines: Sequence[Engine],
        adapters: AdapterResolver,
        *,
        created: int | None = None,
        load: EngineLoad | None = None,
        stats: PlacementStats | None = None,
        base_sampling_defaults: Mapping[str, SamplingDefaults] | None = None,
        aliases: AliasBook | None = None,
    ) -> None:
        if not engines:
            raise ValueError("the router needs at least one engine")
        bases = {engine.base_model for engine in engines}
        if len(bases) != 1:
            raise ValueError(f"all engines must serve one base model, got {sorted(bases)}")
        self._engines = list(engines)
        self._adapters = adapters
        self._turn = itertools.count()
        #: The gateway's requests in flight per engine (shared with the adapter lifecycle).
        self.load = load or EngineLoad([engine.name for engine in engines])
        #: Where failovers are counted (the adapter lifecycle's placement counters).
        self.stats = stats or PlacementStats()
        self._created = int(time.time()) if created is None else created
        #: Base model name -> its defaults; an adapter's own defaults win over them key by key.
        self._base_defaults = dict(base_sampling_defaults or {})
        self.aliases = aliases

    @property
    def base_model(self) -> str:
        return self._engines[0].base_model

    @property
    def engines(self) -> list[Engine]:
        return list(self._engines)

    def pick_base_engine(self, exclude: Collection[str] = ()) -> Engine:
        """The least loaded ready engine not in ``exclude`` (ties rotate);
        EngineUnavailableError (503) when none is ready."""
        ready = [e for e in self._engines if e.ready and e.name not in exclude]
        if not ready:
            states = ", ".join(f"{e.name} {e.status().state}" for e in self._engines)
            reasons = "; ".join(f"{e.name}: {e.status().reason}" for e in self._engines)
            # The engines' own reasons (pids, exit causes) are for the log.
            raise EngineUnavailableError(f"no engine is ready ({states})", detail=reasons)
        if len(ready) == 1:  # nothing to choose (and no snapshot to build per request)
            return ready[0]
        turn = next(self._turn) % len(ready)
        ready = ready[turn:] + ready[:turn]
        snapshot = Snapshot(
            tuple(EngineView(e.name, True, 0, self.load.counts.get(e.name, 0)) for e in ready)
        )
        chosen = choose_base_engine(snapshot)
        return next(e for e in ready if e.name == chosen)

    def note_failover(self, engine_name: str) -> None:
        """A request left ``engine_name`` for another engine (it failed before any byte)."""
        self.stats.count(engine_name, PlacementEvent.FAILOVER)

    def engine_named(self, name: str) -> Engine:
        """The ready engine ``name``; EngineUnavailableError (503) when it is not ready."""
        for engine in self._engines:
            if engine.name == name:
                if not engine.ready:
                    raise EngineUnavailableError(
                        f"engine {name} is not ready ({engine.status().reason})"
                    )
                return engine
        raise EngineUnavailableError(f"no engine named {name}")

    @asynccontextmanager
    async def route(
        self,
        model: str,
        *,
        engine: str | None = None,
        affinity: str = "",
        exclude: Collection[str] = (),
    ) -> AsyncIterator[Route]:
        """Where to send a request for ``model``; held (adapter pinned, in-flight counted)
        until the block exits.

        ``engine``: run it on that engine (a continued response lives in its memory only).
        ``affinity``: what an alias's split sticks by (see
        :func:`gateway.inference.aliases.affinity_of`).
        ``exclude``: not on these engines (they just failed this request: failover).
        """
        base_defaults = self._base_defaults.get(self.base_model) if self._base_defaults else None
        if model == self.base_model:
            picked = (
                self.engine_named(engine) if engine is not None else self.pick_base_engine(exclude)
            )
            self.load.take(picked.name)
            try:
                yield Route(
                    engine=picked,
                    upstream_model=picked.base_model,
                    public_model=model,
                    adapter=None,
                    sampling_defaults=base_defaults,
                )
            finally:
                self.load.release(picked.name)
            return
        if engine is not None:
            self.engine_named(engine)  # a clear 503 before any adapter work
        target = self.aliases.pick(model, affinity) if self.aliases is not None else None
        # ``exclude`` only when set: resolvers that predate failover need not know it.
        extra: dict[str, Any] = {"exclude": exclude} if exclude else {}
        lease = (
            self._adapters.lease(model, engine=engine, **extra)
            if target is None
            else self._adapters.lease(
                target.adapter, engine=engine, version=target.version, **extra
            )
        )
        async with lease as route:
            if target is not None:
                route = replace(route, public_model=model, alias_target=target)
            if base_defaults:
                defaults = layered((base_defaults, route.sampling_defaults))
                route = replace(route, sampling_defaults=defaults)
            yield route

    def public_models(self) -> list[PublicModel]:
        base = PublicModel(
            id=self.base_model,
            created=self._created,
            owned_by="lora-gateway",
            parent=None,
            root=self.base_model,
        )
        aliases = [
            PublicModel(
                id=record.name,
                created=int(record.created_at.timestamp()),
                owned_by="lora-gateway",
                parent=self.base_model,
            )
            for record in (self.aliases.all() if self.aliases is not None else [])
        ]
        return [base, *self._adapters.public_models(), *aliases]
