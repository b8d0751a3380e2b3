"""Routing: turn the ``model`` of a client request into (engine, upstream model, adapter).

Knows nothing of HTTP. The base model's id routes to an engine directly; any other id must be a
registered adapter name, resolved through an :class:`AdapterResolver` (the adapter lifecycle in
:mod:`gateway.lifecycle`), which makes sure the adapter is loaded on an engine and holds it
there (no eviction, no unload) until the request's lease is released. Never a raw path.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

from gateway.engines.base import Engine
from gateway.errors import EngineUnavailableError, ModelNotFoundError


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
    def lease(self, name: str) -> AbstractAsyncContextManager[Route]:
        """Hold adapter ``name`` loaded for one request; ModelNotFoundError if not registered."""
        ...

    def public_models(self) -> list[PublicModel]:
        """Every servable registered adapter."""
        ...


class Router:
    def __init__(self, engines: list[Engine], adapters: AdapterResolver) -> None:
        if not engines:
            raise ValueError("the router needs at least one engine")
        self._engines = engines
        self._adapters = adapters

    @property
    def base_model(self) -> str:
        return self._engines[0].base_model

    def _pick_base_engine(self) -> Engine:
        ready = [engine for engine in self._engines if engine.ready]
        if not ready:
            reasons = "; ".join(f"{e.name}: {e.status().reason}" for e in self._engines)
            raise EngineUnavailableError(f"no engine is ready ({reasons})")
        # Engines serve the same base; spread base traffic round-robin over the ready ones.
        self._rr = (getattr(self, "_rr", -1) + 1) % len(ready)
        return ready[self._rr]

    @asynccontextmanager
    async def route(self, model: str) -> AsyncIterator[Route]:
        if model == self.base_model:
            engine = self._pick_base_engine()
            yield Route(engine=engine, upstream_model=engine.base_model, public_model=model,
                        adapter=None)
            return
        try:
            lease = self._adapters.lease(model)
        except ModelNotFoundError:
            raise
        async with lease as route:
            yield route

    def public_models(self) -> list[PublicModel]:
        base = PublicModel(id=self.base_model, created=0, owned_by="lora-gateway", parent=None)
        return [base, *self._adapters.public_models()]
