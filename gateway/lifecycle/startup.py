"""Adapters at gateway start: build the lifecycle from the settings, scan ``--adapters-dir``.

:func:`open_lifecycle` is what the app's lifespan enters (``gateway.app.open_adapter_resolver``):
it opens the registry database (``settings.resolved_database_url``), makes the validator for
the engines' base model, starts the :class:`~gateway.lifecycle.service.AdapterLifecycle` (which
re-applies the registry's desired state on every ready engine), registers every adapter found
in ``settings.adapters_dir`` and closes it all at shutdown. :func:`scan_adapters_dir` makes a
trainer's output servable without an API call: each sub-directory holding an
``adapter_config.json`` is registered under its manifest's ``adapter_name`` (else the directory
name), as a new version when its content changed; invalid ones are logged with their reason.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from adapters.layout import ADAPTER_CONFIG, MANIFEST, LayoutError, read_json
from adapters.registry import Registry
from adapters.validation import AdapterValidator, ValidationLimits
from gateway.engines.base import Engine
from gateway.errors import GatewayError
from gateway.lifecycle.service import AdapterLifecycle
from gateway.lifecycle.types import LifecycleObserver
from gateway.settings import GatewaySettings

logger = logging.getLogger(__name__)

#: A bound on one scan: directories beyond it are reported, not registered.
MAX_SCANNED_ADAPTERS = 1000


@dataclass(slots=True)
class ScanReport:
    registered: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    #: directory -> why it was not registered
    skipped: dict[str, str] = field(default_factory=dict)


def base_model_dir(settings: GatewaySettings) -> Path | None:
    """The local directory of the engines' base model, if there is one."""
    from gateway.engines.basemodels import locate_base_model

    try:
        spec = locate_base_model(
            settings.base_model, settings.models_dir, settings.served_model_name
        )
    except GatewayError:
        return None  # e.g. a remote engine's model that is not on this machine
    return spec.path


def build_lifecycle(
    settings: GatewaySettings,
    engines: Sequence[Engine],
    *,
    observer: LifecycleObserver | None = None,
    capacity: int | None = None,
) -> AdapterLifecycle:
    """Registry + validator + lifecycle for ``engines`` (blocking: opens the database)."""
    settings.managed_adapters_dir.mkdir(parents=True, exist_ok=True)
    validator = AdapterValidator(
        engines[0].base_model,
        ValidationLimits(
            max_lora_rank=settings.max_lora_rank,
            max_adapter_bytes=settings.max_adapter_bytes,
            allowed_roots=tuple(settings.allowed_adapter_roots),
        ),
        base_dir=base_model_dir(settings),
    )
    return AdapterLifecycle(
        Registry(settings.resolved_database_url),
        engines,
        validator,
        capacity=capacity,
        observer=observer,
        drain_timeout_s=settings.drain_timeout_s,
        load_retry_s=settings.adapter_load_retry_s,
    )


@asynccontextmanager
async def open_lifecycle(
    settings: GatewaySettings,
    engines: Sequence[Engine],
    *,
    observer: LifecycleObserver | None = None,
    capacity: int | None = None,
) -> AsyncIterator[AdapterLifecycle]:
    lifecycle = await asyncio.to_thread(
        build_lifecycle, settings, engines, observer=observer, capacity=capacity
    )
    try:
        await lifecycle.start()
        if settings.adapters_dir is not None:
            await scan_adapters_dir(lifecycle, settings.adapters_dir)
        yield lifecycle
    finally:
        await lifecycle.close()


def _adapter_name(directory: Path) -> str:
    try:
        manifest = read_json(directory / MANIFEST, check="invalid_manifest")
    except LayoutError:
        return directory.name
    name = manifest.get("adapter_name")
    return name if isinstance(name, str) and name else directory.name


def _adapter_dirs(directory: Path) -> list[tuple[Path, str]] | None:
    """(resolved directory, adapter name) of each adapter directly under ``directory``."""
    if not directory.is_dir():
        return None
    return [
        (child.resolve(), _adapter_name(child))
        for child in sorted(directory.iterdir())
        if child.is_dir() and (child / ADAPTER_CONFIG).is_file()
    ]


async def scan_adapters_dir(lifecycle: AdapterLifecycle, directory: Path) -> ScanReport:
    """Register every adapter directory directly under ``directory``; never raises for one."""
    report = ScanReport()
    candidates = await asyncio.to_thread(_adapter_dirs, directory)
    if candidates is None:
        logger.warning("adapters dir %s does not exist; nothing to scan", directory)
        return report
    for child, _ in candidates[MAX_SCANNED_ADAPTERS:]:
        report.skipped[str(child)] = f"more than {MAX_SCANNED_ADAPTERS} adapters in one scan"
    for child, name in candidates[:MAX_SCANNED_ADAPTERS]:
        try:
            _, created = await lifecycle.register(name, child, new_version=True)
        except GatewayError as exc:
            report.skipped[str(child)] = f"{exc.code}: {exc.message}"
            logger.warning("adapters dir: %s not registered (%s): %s", child, exc.code, exc.message)
            continue
        (report.registered if created else report.unchanged).append(name)
    logger.info(
        "adapters dir %s: %d registered, %d unchanged, %d skipped",
        directory,
        len(report.registered),
        len(report.unchanged),
        len(report.skipped),
    )
    return report
