"""The open-loop and closed-loop generators against an in-process FAKE upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from loadtest.fake_vllm import FakeBehaviour, start_server
from loadtest.openloop import Target, build_requests, closed_loop, fixed_rate
from loadtest.sampling import AdapterMix, AdapterSampler
from loadtest.workload import Workload


async def serve(behaviour: FakeBehaviour) -> AsyncIterator[Target]:
    server, _, port = await start_server(behaviour)
    try:
        yield Target("fake", f"http://127.0.0.1:{port}")
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def instant() -> AsyncIterator[Target]:
    async for target in serve(FakeBehaviour(chunks=3)):
        yield target


@pytest.fixture
async def slow() -> AsyncIterator[Target]:
    async for target in serve(FakeBehaviour(chunks=3, delay_ms=2000)):
        yield target


def requests(count: int, stream: bool) -> list[tuple[str, bytes]]:
    sampler = AdapterSampler(AdapterMix.build(["a", "b"]), seed=1)
    return build_requests(Workload(stream=stream, max_tokens=3), sampler, count)


async def test_fixed_rate_sends_every_request_and_reads_streams(instant: Target) -> None:
    result = await fixed_rate(instant, requests(30, stream=True), 100.0, stream=True)
    assert len(result.outcomes) == 30 and result.errors == 0 and not result.overloaded
    # role + 3 tokens + usage
    assert {o.chunks for o in result.outcomes} == {5}
    assert all(o.ttft_s is not None and o.ttft_s <= o.latency_s for o in result.outcomes)
    assert [o.due_s for o in result.outcomes] == pytest.approx([i / 100 for i in range(30)])


async def test_fixed_rate_stops_when_the_server_falls_behind(slow: Target) -> None:
    result = await fixed_rate(
        slow, requests(200, stream=False), 500.0, stream=False, backlog_limit=10
    )
    assert result.overloaded
    assert len(result.outcomes) == 10 and result.errors == 0


async def test_errors_are_outcomes_not_exceptions(instant: Target) -> None:
    broken = Target("fake", instant.base_url + "/nowhere")
    result = await fixed_rate(broken, requests(5, stream=False), 50.0, stream=False)
    assert result.errors == 5 and {o.status for o in result.outcomes} == {404}


async def test_closed_loop_counts_completed_requests(instant: Target) -> None:
    result = await closed_loop(
        instant, requests(16, stream=False), 4, 0.5, stream=False, warmup_s=0.1
    )
    assert result.outcomes and result.errors == 0 and result.elapsed_s >= 0.5


async def test_a_target_with_several_keys_sends_them_round_robin() -> None:
    """The limits suite spreads a phase over many keys: request i carries key i mod n."""
    server, engine, port = await start_server(FakeBehaviour(chunks=3, record_requests=True))
    try:
        keys = ("k-0", "k-1", "k-2")
        target = Target("fake", f"http://127.0.0.1:{port}", api_keys=keys)
        result = await fixed_rate(target, requests(7, stream=False), 200.0, stream=False)
        assert result.errors == 0
        sent = sorted(
            r.headers["authorization"] for r in engine.requests if r.path.endswith("completions")
        )
        assert sent == sorted(f"Bearer {keys[i % 3]}" for i in range(7))
    finally:
        server.close()
        await server.wait_closed()
