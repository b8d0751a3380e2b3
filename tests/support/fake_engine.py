"""FakeEngine: an :class:`~gateway.engines.base.Engine` whose vLLM is the project's FAKE one.

For the lifecycle's and the admin API's in-process tests. Its real
:class:`~gateway.engines.client.EngineClient` talks to a :class:`~loadtest.fake_vllm.FakeVLLM`
through that fake's in-process transport (no socket), so the fake's knobs (refused adapters,
failing or slow loads, an unreachable server, a cap on loaded adapters recorded as violations)
apply; the test drives the engine's state: :meth:`FakeEngine.crash` (the process died and forgot
every adapter) and :meth:`FakeEngine.come_back`. Behaviour against a real vLLM is covered by
tests/integration/test_registry_*.py.
"""

from __future__ import annotations

import httpx

from gateway.engines.base import Engine, EngineState, EngineStatus
from gateway.engines.client import EngineClient
from loadtest.fake_vllm import FakeVLLM


class FakeEngine(Engine):
    """An :class:`Engine` whose HTTP client talks to a :class:`FakeVLLM` in process."""

    def __init__(
        self,
        upstream: FakeVLLM,
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
        client.http = httpx.AsyncClient(base_url=self.url, transport=upstream.transport())
        self._client = client

    @property
    def url(self) -> str:
        return f"http://{self.name}.fake-engine.invalid"

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
