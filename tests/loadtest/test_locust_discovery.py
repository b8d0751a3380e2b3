"""Load testing with no model options: the models come from the server's ``/v1/models``.

``pick_models`` on canned listings, then the locustfile run for real (``python -m loadtest run
--host URL`` with no model option) against a real ``lora-gateway serve`` in front of the FAKE
upstream, with two adapters registered through the admin API: every request succeeds and every
adapter (and only adapters) gets traffic.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtest.adapters_gen import write_random_lora
from loadtest.discovery import DiscoveryError, pick_models
from loadtest.gateway_admin import register_adapters
from loadtest.procs import GatewayOptions, Service, start_gateway
from tests.loadtest.test_locust_run import run_loadtest, stats_rows

ADMIN_TOKEN = "discovery-admin-token-0123456789"
LISTING = {
    "object": "list",
    "data": [
        {"id": "base", "parent": None},
        {"id": "legal", "parent": "base"},
        {"id": "style", "parent": "base"},
    ],
}


def test_pick_models_adapters_by_default_base_on_request() -> None:
    assert pick_models(LISTING, include_base=False) == ["legal", "style"]
    assert pick_models(LISTING, include_base=True) == ["base", "legal", "style"]
    only_base = {"data": [{"id": "base", "parent": None}]}
    assert pick_models(only_base, include_base=False) == ["base"]
    with pytest.raises(DiscoveryError, match="no models"):
        pick_models({"data": []}, include_base=False)
    with pytest.raises(DiscoveryError, match="'data'"):
        pick_models({"error": {"message": "no"}}, include_base=False)


@pytest.fixture(scope="module")
def gateway_over_fake(
    fake_vllm: Service,
    fake_model: str,
    tiny_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Service]:
    work = tmp_path_factory.mktemp("discovery")
    roots = work / "adapters"
    options = GatewayOptions(
        engine_url=fake_vllm.url,
        data_dir=work / "data",
        base_model=str(tiny_model_dir),
        served_name=fake_model,
        admin_token=ADMIN_TOKEN,
        adapter_roots=(roots,),
    )
    service = start_gateway(options, work / "logs")
    try:
        adapters = [
            (name, write_random_lora(roots / name, tiny_model_dir, seed=seed))
            for name, seed in (("disc-a", 1), ("disc-b", 2))
        ]
        assert register_adapters(service.url, ADMIN_TOKEN, adapters, load=True) == 2
        yield service
    finally:
        service.stop()


def test_locustfile_with_no_model_options_loads_every_adapter(
    gateway_over_fake: Service, fake_model: str, tmp_path: Path
) -> None:
    completed = run_loadtest(
        [
            *("--host", gateway_over_fake.url, "-u", "2", "-t", "4"),
            *("--results-dir", str(tmp_path), "--stats-per-model"),
        ]
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    rows = stats_rows(tmp_path / "locust_stats.csv")
    posts = {name: row for (kind, name), row in rows.items() if kind == "POST"}
    assert set(posts) == {"chat full disc-a", "chat full disc-b"}
    assert all(int(row["Request Count"]) > 0 for row in posts.values())
    assert all(int(row["Failure Count"]) == 0 for row in posts.values())
    assert not any(fake_model in name for name in posts)
    # TTFT and throughput over time, beside locust's HTML report.
    assert (tmp_path / "locust.html").stat().st_size > 0
    assert (tmp_path / "locust_timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_include_base_adds_the_base_model(
    gateway_over_fake: Service, fake_model: str, tmp_path: Path
) -> None:
    completed = run_loadtest(
        [
            *("--host", gateway_over_fake.url, "-u", "2", "-t", "4"),
            *("--results-dir", str(tmp_path), "--stats-per-model", "--include-base", "--stream"),
        ]
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    rows = stats_rows(tmp_path / "locust_stats.csv")
    posts = {name for (kind, name) in rows if kind == "POST"}
    assert f"chat stream {fake_model}" in posts
    assert sum(int(row["Failure Count"]) for row in rows.values()) == 0
