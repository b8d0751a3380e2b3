"""Adapters at gateway start: build the lifecycle from the settings, scan ``--adapters-dir``.

:func:`open_lifecycle` is what the app's lifespan enters (``gateway.app.open_adapter_resolver``):
it opens the registry database (``settings.resolved_database_url``), makes the validator for
the engines' base model and the remote-adapter fetcher (:func:`build_fetcher`), starts the
:class:`~gateway.lifecycle.service.AdapterLifecycle` (which re-applies the registry's desired
state on every ready engine), registers every adapter found
in ``settings.adapters_dir`` and closes it all at shutdown. :func:`scan_adapters_dir` makes a
trainer's output servable without an API call: each sub-directory holding an
``adapter_config.json`` is registered under the directory's own name, as a new version when
its content is new; it never undoes an operator's choice (see its docstring); directories it
does not register are logged with their reason.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from adapters.contract import ADAPTER_CONFIG, MANIFEST, MANIFEST_ADAPTER_NAME
from adapters.errors import AdapterError
from adapters.layout import LayoutError, read_adapter, read_json, with_sha256
from adapters.registry import Registry
from adapters.sources import HubSource, S3Source, Sources
from adapters.store import AdapterStore
from adapters.validation import AdapterValidator, ValidationLimits
from gateway.engines.base import Engine
from gateway.errors import GatewayError
from gateway.lifecycle.fetching import AdapterFetcher, FetchLimits
from gateway.lifecycle.service import AdapterLifecycle
from gateway.lifecycle.types import LifecycleObserver
from gateway.placement.board import SharedBoard, new_replica_id
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
    registry = Registry(settings.resolved_database_url)
    board = (
        SharedBoard.open(
            settings.resolved_database_url,
            settings.replica_id or new_replica_id(),
            dead_after_s=settings.replica_dead_after_s,
            release_timeout_s=settings.placement_release_timeout_s,
            poll_s=min(0.25, settings.replica_sync_interval_s / 2),
        )
        if settings.shares_placements
        else None
    )
    store = AdapterStore(settings.adapter_store_dir, validator)
    store.adopt(registry)  # versions registered before the store existed
    fetcher = build_fetcher(settings)
    fetcher.clean_staging()
    return AdapterLifecycle(
        registry,
        engines,
        store,
        fetcher=fetcher,
        capacity=capacity,
        observer=observer,
        drain_timeout_s=settings.drain_timeout_s,
        load_retry_s=settings.adapter_load_retry_s,
        policy=settings.placement_policy,
        replicate_threshold=settings.replicate_threshold,
        board=board,
        sync_interval_s=settings.replica_sync_interval_s,
    )


def build_fetcher(settings: GatewaySettings) -> AdapterFetcher:
    """The remote-adapter fetcher: the sources configured from ``settings``, and its limits."""

    def secret(value: SecretStr | None) -> str | None:
        return value.get_secret_value() if value is not None else None

    sources = Sources(
        s3=S3Source(
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=secret(settings.s3_access_key_id),
            secret_access_key=secret(settings.s3_secret_access_key),
        ),
        hf=HubSource(cache_dir=settings.hf_cache_dir, token=secret(settings.hf_token)),
    )
    limits = FetchLimits(
        max_adapter_bytes=settings.max_adapter_bytes,
        timeout_s=settings.fetch_timeout_s,
        attempts=settings.fetch_attempts,
        backoff_s=settings.fetch_backoff_s,
        wait_max_s=settings.fetch_wait_max_s,
    )
    return AdapterFetcher(sources, settings.adapter_fetch_dir, limits)


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


def _manifest_name(directory: Path) -> str | None:
    """The adapter name the directory's manifest claims, if it has one."""
    try:
        manifest = read_json(directory / MANIFEST, check="invalid_manifest")
    except LayoutError:
        return None
    name = manifest.get(MANIFEST_ADAPTER_NAME)
    return name if isinstance(name, str) and name else None


def _adapter_dirs(directory: Path) -> list[Path] | None:
    """The resolved adapter directories directly under ``directory``."""
    if not directory.is_dir():
        return None
    return [
        child.resolve()
        for child in sorted(directory.iterdir())
        if child.is_dir() and (child / ADAPTER_CONFIG).is_file()
    ]


def _content_of(directory: Path) -> tuple[str, str] | None:
    """(weights sha256, config sha256) of an adapter directory; None when unreadable (the
    registration that follows reports why)."""
    try:
        layout = with_sha256(read_adapter(directory))
    except (AdapterError, OSError):
        return None
    return layout.sha256, layout.config_sha256


class _Refused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


async def _scan_one(lifecycle: AdapterLifecycle, child: Path) -> bool | None:
    """Register one directory under its own name: True (new version), None (unchanged)."""
    name = child.name
    claimed = await asyncio.to_thread(_manifest_name, child)
    if claimed is not None and claimed != name:
        raise _Refused(
            "manifest_name_mismatch",
            f"its {MANIFEST} names adapter {claimed[:80]!r} but the scan serves a directory "
            f"under its own name {name!r}; rename the directory to {claimed[:80]!r} or "
            "register it through the admin API",
        )
    record = await asyncio.to_thread(lifecycle.registry.get, name)
    if record is None:
        await lifecycle.register(name, child)
        return True
    others = sorted({v.source_path for v in record.versions} - {str(child)})
    if others:
        raise _Refused(
            "name_registered_elsewhere",
            f"adapter {name!r} is registered from {others[0]}; the scan only adds versions "
            "to adapters it registered from this same directory",
        )
    content = await asyncio.to_thread(_content_of, child)
    if content is not None and any(v.same_content(*content) for v in record.versions):
        return None  # registered before (active or not): what the operator chose stands
    _, created = await lifecycle.register(name, child, new_version=True)
    return created or None


async def scan_adapters_dir(lifecycle: AdapterLifecycle, directory: Path) -> ScanReport:
    """Register every adapter directory directly under ``directory``; never raises for one.

    The scan never changes what an operator chose: each directory is served under its own name
    (a manifest naming another adapter is refused); a name that has a version from any other
    source is left alone; content already registered under the name, active or not, is not
    registered again (so a restore survives restarts); new content becomes the next version.
    """
    report = ScanReport()
    candidates = await asyncio.to_thread(_adapter_dirs, directory)
    if candidates is None:
        logger.warning("adapters dir %s does not exist; nothing to scan", directory)
        return report
    for child in candidates[MAX_SCANNED_ADAPTERS:]:
        report.skipped[str(child)] = f"more than {MAX_SCANNED_ADAPTERS} adapters in one scan"
    for child in candidates[:MAX_SCANNED_ADAPTERS]:
        try:
            created = await _scan_one(lifecycle, child)
        except (GatewayError, AdapterError, _Refused) as exc:
            report.skipped[str(child)] = f"{exc.code}: {exc.message}"
            logger.warning("adapters dir: %s not registered (%s): %s", child, exc.code, exc.message)
            continue
        (report.registered if created else report.unchanged).append(child.name)
    logger.info(
        "adapters dir %s: %d registered, %d unchanged, %d skipped",
        directory,
        len(report.registered),
        len(report.unchanged),
        len(report.skipped),
    )
    return report
