"""gateway.observability.engine_activity: vLLM's lora_requests_info turned into per-adapter gauges.

The ``vllm-0.32-metrics-*.txt`` fixtures are whole ``/metrics`` pages of a real vLLM 0.32
(tiny Llama, ``--max-loras 1``, adapters ``a1`` and ``legal-lora@v2``) taken while three ``a1``
requests, two ``legal-lora@v2`` requests and one base request of 300 tokens ran, and after.
Engines here get a fake upstream (httpx.MockTransport) only to inject faults and known pages.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from gateway.engines.base import Engine, EngineState, EngineStatus
from gateway.engines.client import EngineClient
from gateway.observability.engine_activity import (
    EngineAdapterActivity,
    parse_lora_activity,
    public_counts,
    versioned_public_name,
)
from gateway.observability.metrics import OTHER

FIXTURES = Path(__file__).parents[1] / "fixtures"


def page(name: str) -> str:
    return (FIXTURES / f"vllm-0.32-metrics-{name}.txt").read_text()


def public(name: str) -> str | None:
    """What the lifecycle maps upstream names to in these tests: drop the version."""
    known = {"a1": "a1", "legal-lora@v2": "legal-lora", "legal-lora@v1": "legal-lora"}
    return known.get(name)


# --- the parser against real vLLM output ----------------------------------------------------


def test_real_page_with_one_active_adapter() -> None:
    activity = parse_lora_activity(page("busy-one-adapter"))
    assert activity is not None
    # vLLM 0.32 lists each active adapter once, in both labels (see the module docstring).
    assert activity.running == {"a1": 1}
    assert activity.waiting == {"a1": 1}
    assert activity.max_lora == 1
    assert activity.seen == {"a1"}


def test_real_page_takes_the_latest_of_several_samples() -> None:
    # Three label sets are present: a1 (oldest), "" and legal-lora@v2 (latest).
    activity = parse_lora_activity(page("busy-switching"))
    assert activity is not None
    assert activity.running == {"legal-lora@v2": 1}
    assert activity.seen == {"a1", "legal-lora@v2"}
    running, waiting = public_counts(activity, public)
    assert running == {"a1": 0, "legal-lora": 1}
    assert waiting == {"a1": 0, "legal-lora": 1}


def test_real_page_after_the_traffic_is_idle() -> None:
    activity = parse_lora_activity(page("idle-after"))
    assert activity is not None
    assert activity.running == {} and activity.waiting == {}
    assert public_counts(activity, public) == (
        {"a1": 0, "legal-lora": 0},
        {"a1": 0, "legal-lora": 0},
    )


# --- the parser against synthetic pages ------------------------------------------------------


def info(running: str, waiting: str, at: float, max_lora: str = "4") -> str:
    return (
        f'vllm:lora_requests_info{{max_lora="{max_lora}",running_lora_adapters="{running}",'
        f'waiting_lora_adapters="{waiting}"}} {at}\n'
    )


HEADER = (
    "# HELP vllm:lora_requests_info Running stats on lora requests.\n"
    "# TYPE vllm:lora_requests_info gauge\n"
)


def test_repeated_names_are_counted() -> None:
    text = HEADER + info("a,b,a,a", "b,c", 1.0e9)
    activity = parse_lora_activity(text)
    assert activity is not None
    assert activity.running == {"a": 3, "b": 1}
    assert activity.waiting == {"b": 1, "c": 1}


def test_sample_order_does_not_matter_only_the_value() -> None:
    text = HEADER + info("new", "", 2.0e9) + info("old", "old", 1.0e9)
    activity = parse_lora_activity(text)
    assert activity is not None and activity.running == {"new": 1}


def test_versions_of_one_adapter_add_up_and_unknown_names_share_a_bucket() -> None:
    text = HEADER + info("legal-lora@v1,legal-lora@v2,rogue1,rogue2", "", 1.0e9)
    activity = parse_lora_activity(text)
    assert activity is not None
    running, _ = public_counts(activity, public)
    assert running == {"legal-lora": 2, OTHER: 2}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "# HELP vllm:num_requests_running x\n# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{model_name="m"} 0.0\n',
        HEADER,  # LoRA enabled, no request seen yet: the family has no samples
    ],
)
def test_pages_without_lora_samples(text: str) -> None:
    assert parse_lora_activity(text) is None


def test_non_numeric_max_lora_is_tolerated() -> None:
    activity = parse_lora_activity(HEADER + info("a", "", 1.0, max_lora="n/a"))
    assert activity is not None and activity.max_lora is None


# --- the collector, refreshed on demand ------------------------------------------------------


class FakeUpstreamEngine(Engine):
    """An engine whose HTTP client talks to a handler in the test (fault injection)."""

    def __init__(self, name: str, handler: Callable[[httpx.Request], httpx.Response]) -> None:
        super().__init__(name, "tiny", lora_capacity=2)
        self.calls = 0

        def counting(request: httpx.Request) -> httpx.Response:
            self.calls += 1
            return handler(request)

        client = EngineClient(self.url)
        client.http = httpx.AsyncClient(base_url=self.url, transport=httpx.MockTransport(counting))
        self._client = client

    @property
    def url(self) -> str:
        return f"http://{self.name}.test"

    def status(self) -> EngineStatus:
        return EngineStatus(self.name, EngineState.READY, "", 0, self.url)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        await self.close_client()


def serve(text: str, status: int = 200) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(status, text=text)


def refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


async def test_collector_exports_per_engine_per_adapter_gauges() -> None:
    registry = CollectorRegistry()
    engines = [
        FakeUpstreamEngine("e0", serve(page("busy-switching"))),
        FakeUpstreamEngine("e1", serve(page("busy-one-adapter"))),
    ]
    activity = EngineAdapterActivity(engines, public, registry=registry, min_interval_s=0)
    # Nothing is scraped until a refresh: no series yet.
    assert (
        registry.get_sample_value(
            "lora_gateway_engine_adapter_running_requests",
            {"engine": "e0", "adapter": "legal-lora"},
        )
        is None
    )
    await activity.refresh()

    def running(engine: str, adapter: str) -> float | None:
        return registry.get_sample_value(
            "lora_gateway_engine_adapter_running_requests", {"engine": engine, "adapter": adapter}
        )

    assert running("e0", "legal-lora") == 1
    assert running("e0", "a1") == 0
    assert running("e1", "a1") == 1
    assert running("e1", "legal-lora") is None
    assert (
        registry.get_sample_value(
            "lora_gateway_engine_adapter_waiting_requests", {"engine": "e1", "adapter": "a1"}
        )
        == 1
    )


async def test_failed_scrape_drops_the_engines_series_and_counts_it() -> None:
    registry = CollectorRegistry()
    pages = {"status": 200}

    def flaky(request: httpx.Request) -> httpx.Response:
        return httpx.Response(pages["status"], text=page("busy-one-adapter"))

    engines = [FakeUpstreamEngine("up", flaky), FakeUpstreamEngine("gone", refuse)]
    activity = EngineAdapterActivity(engines, public, registry=registry, min_interval_s=0)
    await activity.refresh()
    labels = {"engine": "up", "adapter": "a1"}
    assert registry.get_sample_value("lora_gateway_engine_adapter_running_requests", labels) == 1
    assert (
        registry.get_sample_value(
            "lora_gateway_engine_metrics_scrape_failures_total", {"engine": "gone"}
        )
        == 1
    )
    pages["status"] = 500
    await activity.refresh()
    assert registry.get_sample_value("lora_gateway_engine_adapter_running_requests", labels) is None
    assert (
        registry.get_sample_value(
            "lora_gateway_engine_metrics_scrape_failures_total", {"engine": "up"}
        )
        == 1
    )


async def test_slow_engine_is_cut_off_by_the_timeout() -> None:
    class SlowTransport(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            await asyncio.sleep(5)
            return httpx.Response(200, text=page("busy-one-adapter"))

    engine = FakeUpstreamEngine("slow", serve(""))
    engine.client.http = httpx.AsyncClient(base_url=engine.url, transport=SlowTransport())
    registry = CollectorRegistry()
    activity = EngineAdapterActivity([engine], public, registry=registry, scrape_timeout_s=0.1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await activity.refresh()
    assert loop.time() - started < 1.0
    assert (
        registry.get_sample_value(
            "lora_gateway_engine_metrics_scrape_failures_total", {"engine": "slow"}
        )
        == 1
    )


async def test_concurrent_scrapes_share_one_refresh() -> None:
    engine = FakeUpstreamEngine("e0", serve(page("idle-after")))
    activity = EngineAdapterActivity([engine], public, min_interval_s=60)
    await asyncio.gather(*(activity.refresh() for _ in range(10)))
    await activity.refresh()
    assert engine.calls == 1


def test_versioned_upstream_names_map_to_registered_names() -> None:
    registered = {"legal": "/a"}
    public_name_of = versioned_public_name(registered.keys)
    assert public_name_of("legal@v2.3f9a") == "legal"
    assert public_name_of("legal") == "legal"
    assert public_name_of("medical@v1.aa") is None
    registered["medical"] = "/b"  # read live
    assert public_name_of("medical@v1.aa") == "medical"


async def test_engines_bound_late_are_scraped() -> None:
    registry = CollectorRegistry()
    activity = EngineAdapterActivity([], public, registry=registry, min_interval_s=60)
    await activity.refresh()  # nothing to scrape yet
    activity.bind_engines([FakeUpstreamEngine("late", serve(page("busy-one-adapter")))])
    await activity.refresh()  # binding resets the refresh interval
    labels = {"engine": "late", "adapter": "a1"}
    assert registry.get_sample_value("lora_gateway_engine_adapter_running_requests", labels) == 1
