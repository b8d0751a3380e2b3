"""gateway.lifecycle.startup: the lifecycle built from settings, and the --adapters-dir scan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapters.contract import MANIFEST, MANIFEST_ADAPTER_NAME
from adapters.errors import AdapterError
from adapters.registry import Registry
from gateway.lifecycle.startup import open_lifecycle, scan_adapters_dir
from gateway.settings import GatewaySettings
from loadtest.fake_vllm import FakeVLLM
from tests.adapters.builders import write_adapter, write_base_model
from tests.support.fake_engine import FakeEngine

BASE = "tinybase"


@pytest.fixture
def settings(tmp_path: Path) -> GatewaySettings:
    base = write_base_model(tmp_path / "models" / BASE)
    return GatewaySettings(
        data_dir=tmp_path / "data", base_model=str(base), adapters_dir=tmp_path / "trained"
    )


async def test_scan_registers_valid_and_reports_invalid(settings: GatewaySettings) -> None:
    scan = settings.adapters_dir
    assert scan is not None
    write_adapter(scan / "plain", base_model=BASE, seed=1)
    write_adapter(
        scan / "legal-style",
        base_model=BASE,
        seed=2,
        manifest={MANIFEST_ADAPTER_NAME: "legal-style", "base_model": {"name": BASE}},
    )
    # The name is the directory's: a manifest that names another adapter is refused.
    write_adapter(scan / "out-7", base_model=BASE, seed=4, manifest={MANIFEST_ADAPTER_NAME: "x"})
    write_adapter(scan / "too-deep", base_model=BASE, r=64)
    write_adapter(scan / "bad name!", base_model=BASE)
    (scan / "not-an-adapter").mkdir()
    (scan / "notes.txt").write_text("ignored")

    async with open_lifecycle(settings, [FakeEngine(FakeVLLM(), base_model=BASE)]) as lifecycle:
        assert [m.id for m in lifecycle.public_models()] == ["legal-style", "plain"]
        # A re-scan: unchanged content is a no-op; changed content becomes the next version.
        write_adapter(scan / "plain", base_model=BASE, seed=3)
        report = await scan_adapters_dir(lifecycle, scan)
        assert report.registered == ["plain"] and report.unchanged == ["legal-style"]
        assert lifecycle.view("plain").record.active_version == 2
        assert set(report.skipped) == {
            str(scan / "too-deep"),
            str(scan / "bad name!"),
            str(scan / "out-7"),
        }
        assert report.skipped[str(scan / "out-7")].startswith("manifest_name_mismatch:")
        assert report.skipped[str(scan / "too-deep")].startswith("rank_exceeds_max:")
        assert report.skipped[str(scan / "bad name!")].startswith("invalid_name:")
        missing = await scan_adapters_dir(lifecycle, scan / "nope")
        assert missing.registered == [] and missing.skipped == {}

    # The registry file lives in the data dir and outlives the lifecycle.
    registry = Registry(settings.resolved_database_url)
    assert [r.name for r in registry.list()] == ["legal-style", "plain"]
    assert (settings.data_dir / "registry.db").is_file()
    registry.close()


async def test_validator_checks_against_the_settings_base_model(
    settings: GatewaySettings, tmp_path: Path
) -> None:
    roots = settings.managed_adapters_dir
    async with open_lifecycle(settings, [FakeEngine(FakeVLLM(), base_model=BASE)]) as lifecycle:
        path = write_adapter(roots / "wide", base_model=BASE, layers=3)
        with pytest.raises(AdapterError) as caught:
            await lifecycle.register("wide", path)
        assert caught.value.code == "target_modules_missing"
        assert lifecycle.capacity == 2  # the engine's lora_capacity by default


async def test_trainer_manifest_is_accepted(settings: GatewaySettings) -> None:
    """The manifest written by trainer.manifest names the base by dir and config hash."""
    from trainer.manifest import base_model_identity

    base_dir = Path(settings.base_model)
    identity = base_model_identity(base_dir)
    manifest = {MANIFEST_ADAPTER_NAME: "from-trainer", "base_model": identity}
    path = write_adapter(
        settings.managed_adapters_dir / "t", base_model=str(base_dir), manifest=manifest
    )
    async with open_lifecycle(settings, [FakeEngine(FakeVLLM(), base_model=BASE)]) as lifecycle:
        view, _ = await lifecycle.register("from-trainer", path)
        assert view.active.version.manifest == json.loads((path / MANIFEST).read_text())
        tampered = {**manifest, "base_model": {**identity, "config_sha256": "f" * 64}}
        other = write_adapter(
            settings.managed_adapters_dir / "t2",
            base_model=str(base_dir),
            manifest=tampered,
            seed=5,
        )
        with pytest.raises(AdapterError) as caught:
            await lifecycle.register("t2", other)
        assert caught.value.code == "base_model_mismatch"


async def test_a_restore_survives_a_restart_with_the_scan(settings: GatewaySettings) -> None:
    """The scan never changes what an operator chose: content already registered is left as
    it is, even when it is not the active version."""
    scan = settings.adapters_dir
    assert scan is not None
    write_adapter(scan / "legal", base_model=BASE, seed=1)
    engines = [FakeEngine(FakeVLLM(), base_model=BASE)]
    async with open_lifecycle(settings, engines) as lifecycle:
        assert lifecycle.view("legal").record.active_version == 1
    write_adapter(scan / "legal", base_model=BASE, seed=2)  # retrained in place
    async with open_lifecycle(settings, engines) as lifecycle:
        assert lifecycle.view("legal").record.active_version == 2
        await lifecycle.restore("legal", 1)  # the operator rolls back
    async with open_lifecycle(settings, engines) as lifecycle:
        record = lifecycle.view("legal").record
        assert (record.active_version, len(record.versions)) == (1, 2)
        report = await scan_adapters_dir(lifecycle, scan)
        assert report.unchanged == ["legal"] and report.registered == []
        assert lifecycle.view("legal").record.active_version == 1


async def test_a_directory_cannot_take_over_another_adapters_name(
    settings: GatewaySettings, caplog: pytest.LogCaptureFixture
) -> None:
    scan = settings.adapters_dir
    assert scan is not None
    engines = [FakeEngine(FakeVLLM(), base_model=BASE)]
    async with open_lifecycle(settings, engines) as lifecycle:
        await lifecycle.register(
            "legal", write_adapter(settings.managed_adapters_dir / "legal", base_model=BASE)
        )
    # A new directory whose manifest names "legal", and one whose own name is "legal".
    write_adapter(scan / "evil", base_model=BASE, seed=6, manifest={MANIFEST_ADAPTER_NAME: "legal"})
    write_adapter(scan / "legal", base_model=BASE, seed=7)
    async with open_lifecycle(settings, engines) as lifecycle:
        record = lifecycle.view("legal").record
        assert (record.active_version, len(record.versions)) == (1, 1)
        assert [m.id for m in lifecycle.public_models()] == ["legal"]
        report = await scan_adapters_dir(lifecycle, scan)
        assert report.registered == [] and report.unchanged == []
        assert set(report.skipped) == {str(scan / "evil"), str(scan / "legal")}
    assert "evil" in caplog.text and "legal" in caplog.text
