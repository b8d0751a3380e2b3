"""``GET /admin/status`` in front of the scripted fake upstream: requests in flight counted,
engine details (which the open /readyz hides) shown to the admin only."""

from __future__ import annotations

import asyncio
import json

from loadtest.fake_vllm import DONE, Recorded, Reply, Stream, chunk_event
from tests.gateway.conftest import GatewayFactory
from tests.gateway.openai_env import ADAPTER, chat

TOKEN = "status-admin-token-0123456789"
EVENTS = [chunk_event(ADAPTER, text) for text in ("Hel", "lo")] + [DONE]


async def test_status_counts_a_stream_in_flight(make_gateway: GatewayFactory) -> None:
    async with make_gateway(admin_token=TOKEN) as gateway:
        gate = asyncio.Event()

        async def gated(recorded: Recorded) -> Reply:
            return Stream([EVENTS[0], gate, *EVENTS[1:]])

        gateway.fake.handler = gated
        gateway.engine.reason = "ready (pid 4242)"
        admin = {"Authorization": f"Bearer {TOKEN}"}
        async with gateway.http.stream(
            "POST", "/v1/chat/completions", json=chat(ADAPTER, stream=True)
        ) as response:
            chunks = response.aiter_raw()
            await chunks.__anext__()
            during = (await gateway.http.get("/admin/status", headers=admin)).json()
            gate.set()
            async for _ in chunks:
                pass
        after = (await gateway.http.get("/admin/status", headers=admin)).json()
    assert during["in_flight"] == 1 and after["in_flight"] == 0
    (engine,) = during["engines"]
    assert engine["reason"] == "ready (pid 4242)" and engine["state"] == "ready"
    assert ADAPTER in json.dumps(during["adapters"])  # the app's own lifecycle, scanned
