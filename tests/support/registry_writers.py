"""Registry writers for concurrency tests, run in child processes (multiprocessing, spawn).

Each child opens its own :class:`adapters.registry.Registry` (its own connection pool, as a
second gateway replica would), waits at a barrier so the children start together, and does the
same writes as the others; what each got back goes to a queue for the test to compare.
"""

from __future__ import annotations

from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier

from adapters.errors import AdapterError
from adapters.registry import NewVersion, Registry


def register_versions(
    url: str, name: str, count: int, tag: str, barrier: Barrier, results: Queue[object]
) -> None:
    """Register ``count`` versions of ``name``; put (tag, [version numbers], [errors])."""
    registry = Registry(url)
    numbers: list[int] = []
    errors: list[str] = []
    try:
        barrier.wait(timeout=60)
        for index in range(count):
            new = NewVersion(
                base_model="tinybase",
                source_path=f"/adapters/{tag}-{index}",
                rank=8,
                alpha=16.0,
                target_modules=("q_proj",),
                sha256=f"{tag}{index}".ljust(64, "0"),
                config_sha256="c" * 64,
                size_bytes=1,
            )
            try:
                record = registry.add(name, new, pinned=False)
            except AdapterError as exc:
                errors.append(f"{exc.kind}: {exc}")
                continue
            mine = [v for v in record.versions if v.source_path == new.source_path]
            numbers.extend(v.version for v in mine)
    finally:
        registry.close()
        results.put((tag, numbers, errors))


def open_registry(url: str, tag: str, barrier: Barrier, results: Queue[object]) -> None:
    """Open (and so create or migrate) the registry at ``url``; put (tag, error or None)."""
    error: str | None = None
    try:
        barrier.wait(timeout=60)
        Registry(url).close()
    except AdapterError as exc:
        error = str(exc)
    finally:
        results.put((tag, error))
