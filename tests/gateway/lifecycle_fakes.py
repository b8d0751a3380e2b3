"""A FAKE engine for the lifecycle's in-process tests: fault injection, not a model.

:class:`FakeLoraUpstream` answers vLLM's runtime LoRA endpoints the way vLLM 0.32 does (200 on
load, 400 "already been loaded" on a duplicate name, 404 for a missing path or an unknown name
on unload, 500 for any other failure while loading) through ``httpx.MockTransport``, so the
real :class:`~gateway.engines.client.EngineClient` code runs. It can refuse adapters, fail loads,
drop off the network, slow loads and unloads down and "restart" (forget every adapter). It also
checks the lifecycle's invariants: never more adapters loaded than allowed, never a request for
an adapter that is not loaded. Behaviour against a real vLLM is covered by
tests/integration/test_registry_*.py.
"""

from __future__ import annotations

import asyncio
import json

import httpx

from gateway.engines.base import Engine, EngineState, EngineStatus
from gateway.engines.client import EngineClient


def _error(status: int, kind: str, message: str) -> httpx.Response:
    return httpx.Response(
        status, json={"error": {"message": message, "type": kind, "code": status}}
    )


class FakeLoraUpstream:
    def __init__(self, max_loaded: int | None = None) -> None:
        self.loaded: dict[str, str] = {}
        self.max_loaded = max_loaded
        self.peak_loaded = 0
        self.calls: list[tuple[str, str]] = []
        #: Public adapter names (before the ``@``) whose loads answer vLLM's 404 for a bad path.
        self.refuse_names: set[str] = set()
        #: While set, every load answers vLLM's 500 (an exception inside the engine).
        self.fail_loads_with: str | None = None
        self.unreachable = False
        self.load_delay_s = 0.0
        self.unload_delay_s = 0.0
        self.violations: list[str] = []

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if self.unreachable:
            raise httpx.ConnectError("fake engine is down", request=request)
        body = json.loads(request.content) if request.content else {}
        path = request.url.path
        if path == "/v1/load_lora_adapter":
            name, lora_path = body["lora_name"], body["lora_path"]
            self.calls.append(("load", name))
            await asyncio.sleep(self.load_delay_s)
            if self.fail_loads_with is not None:
                return _error(500, "InternalServerError", self.fail_loads_with)
            if name.split("@")[0] in self.refuse_names:
                return _error(
                    404,
                    "NotFoundError",
                    f"Loading lora {name} failed: No adapter found for {lora_path}",
                )
            if name in self.loaded:
                return _error(
                    400,
                    "BadRequestError",
                    f"The lora adapter '{name}' has already been loaded. If you "
                    "want to load the adapter in place, set 'load_inplace' to True.",
                )
            self.loaded[name] = lora_path
            self.peak_loaded = max(self.peak_loaded, len(self.loaded))
            if self.max_loaded is not None and len(self.loaded) > self.max_loaded:
                self.violations.append(f"{len(self.loaded)} loaded: {sorted(self.loaded)}")
            return httpx.Response(200, text=f"Success: LoRA adapter '{name}' added successfully.")
        if path == "/v1/unload_lora_adapter":
            name = body["lora_name"]
            self.calls.append(("unload", name))
            await asyncio.sleep(self.unload_delay_s)
            if self.loaded.pop(name, None) is None:
                return _error(404, "NotFoundError", f"The lora adapter '{name}' cannot be found.")
            return httpx.Response(200, text="ok")
        if path == "/health":
            return httpx.Response(200)
        return httpx.Response(404, json={"detail": "Not Found"})

    def serve(self, upstream_model: str) -> None:
        """What a completion request checks first: the adapter must be loaded."""
        if upstream_model not in self.loaded:
            self.violations.append(f"request for {upstream_model} while not loaded")

    def count(self, kind: str) -> int:
        return sum(1 for call, _ in self.calls if call == kind)


class FakeEngine(Engine):
    """An :class:`Engine` whose HTTP client talks to a :class:`FakeLoraUpstream`."""

    def __init__(
        self,
        upstream: FakeLoraUpstream,
        *,
        name: str = "fake",
        base_model: str = "tinybase",
        lora_capacity: int = 2,
    ) -> None:
        super().__init__(name, base_model, lora_capacity)
        self.upstream = upstream
        self.state = EngineState.READY
        self.restarts = 0
        client = EngineClient(self.url)
        client.http = httpx.AsyncClient(
            base_url=self.url, transport=httpx.MockTransport(upstream.handle)
        )
        self._client = client

    @property
    def url(self) -> str:
        return "http://fake-engine.invalid"

    def status(self) -> EngineStatus:
        return EngineStatus(
            name=self.name,
            state=self.state,
            reason=str(self.state),
            restarts=self.restarts,
            url=self.url,
        )

    async def start(self) -> None:
        self.state = EngineState.READY

    async def stop(self) -> None:
        self.state = EngineState.STOPPED

    def crash(self) -> None:
        """The process died: it forgets every adapter; not ready until :meth:`come_back`."""
        self.state = EngineState.DOWN
        self.upstream.loaded.clear()
        self.restarts += 1

    async def come_back(self, *, notify: bool = True) -> None:
        self.state = EngineState.READY
        if notify:
            await self._notify_ready()
