"""EngineAdapters: a small AdapterResolver over adapters loaded straight onto one engine.

For gateway tests that must not depend on the adapter registry: each public name maps to a
LoRA name on the engine (versioned, like the lifecycle's ``name@vN``, so the proxy's model
rename is exercised) and, for a real vLLM, the adapter directory that :meth:`load_all` loads
there through the engine's own client. It counts leases, so tests can check that a request holds
its adapter until its response (stream included) has ended.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from gateway.engines.base import Engine
from gateway.inference.routing import PublicModel, Route, unknown_model


@dataclass(frozen=True)
class LoadedAdapter:
    public_name: str
    upstream_name: str
    path: Path | None = None


class EngineAdapters:
    def __init__(self, engine: Engine, adapters: list[LoadedAdapter]) -> None:
        self.engine = engine
        self.adapters = {adapter.public_name: adapter for adapter in adapters}
        self.active_leases = 0
        self.leases_taken = 0

    async def load_all(self) -> None:
        for adapter in self.adapters.values():
            if adapter.path is not None:
                await self.engine.client.load_lora(adapter.upstream_name, str(adapter.path))

    def lease(self, name: str) -> AbstractAsyncContextManager[Route]:
        adapter = self.adapters.get(name)
        if adapter is None:
            raise unknown_model(name)
        return self._lease(adapter)

    @asynccontextmanager
    async def _lease(self, adapter: LoadedAdapter) -> AsyncIterator[Route]:
        self.active_leases += 1
        self.leases_taken += 1
        try:
            yield Route(
                engine=self.engine,
                upstream_model=adapter.upstream_name,
                public_model=adapter.public_name,
                adapter=adapter.public_name,
            )
        finally:
            self.active_leases -= 1

    def public_models(self) -> list[PublicModel]:
        return [
            PublicModel(
                id=a.public_name,
                created=0,
                owned_by="tests",
                parent=self.engine.base_model,
                root=a.upstream_name,
            )
            for a in self.adapters.values()
        ]
