"""The adapter store: a content-addressed, read-only copy of each registered adapter.

Why: an adapter is validated once, at registration, but an engine reads its files at every
load (first use, after an eviction, after an engine restart). Loading from the directory the
operator named would let anyone who can write there (or swap it, or a parent, for a symlink)
change what is served under a validated name; ``lora-trainer train --overwrite`` would do it
by accident. So registration copies the files here and the engine only ever loads the copy
(the gateway puts the store in ``<data_dir>/adapters/.store``, on the volume its engines
share)::

    <store root>/
      <digest>/                  read-only; digest = sha256 over the copied files' names+hashes
        adapter_config.json
        adapter_model.safetensors
        manifest.json            (when the source has one)
      .tmp-<random>/             a copy in progress; renamed into place atomically

:meth:`AdapterStore.admit` validates the source (so errors name the operator's path), copies
the contract's files (regular files only: a symlink is refused, never followed; each file
bounded by the validator's limits) into a temporary directory, makes them read-only, renames
it to ``<digest>`` (or drops it when that copy already exists: same content, same directory),
then validates THE COPY and checks it hashes like the source did. The layout it returns points
at the copy, with ``source_path`` naming where it came from.

Called by the gateway's adapter lifecycle: ``admit`` at registration, ``verify`` before a
restore, ``adopt`` at start (versions recorded before the store existed), ``collect`` at start
and after a delete (a copy still used by another version is
kept; so is one younger than ``collect_grace_s``: it may be admitted but not recorded yet).
Raises :class:`adapters.errors.AdapterError`; imports nothing from the gateway.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import shutil
import stat
import threading
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from adapters.contract import ADAPTER_CONFIG, ADAPTER_FILES, ADAPTER_WEIGHTS, MANIFEST
from adapters.errors import AdapterError, AdapterErrorKind
from adapters.layout import MAX_JSON_FILE_BYTES, AdapterLayout
from adapters.registry import AdapterVersion, Registry
from adapters.validation import AdapterValidator

logger = logging.getLogger(__name__)

_TMP_PREFIX = ".tmp-"
_CHUNK = 1 << 20
_FILE_MODE = 0o444
_DIR_MODE = 0o555


class AdapterStore:
    """Copies adapters into ``root`` and validates the copies with ``validator``."""

    def __init__(
        self, root: Path, validator: AdapterValidator, *, collect_grace_s: float = 600.0
    ) -> None:
        self.root = Path(root)
        self.validator = validator
        #: A copy this young is never collected: it may be admitted but not yet recorded.
        self.collect_grace_s = collect_grace_s
        # Publishing (or reusing) a copy and collecting unused ones never interleave.
        self._lock = threading.Lock()

    def admit(self, name: str, path: str | Path) -> AdapterLayout:
        """Validate ``path``, copy it into the store, validate the copy; the copy's layout."""
        source = self.validator.validate(name, path)
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f"{_TMP_PREFIX}{secrets.token_hex(8)}"
        staging.mkdir(mode=0o700)
        try:
            digest = self._copy(source.path, staging)
            final = self.root / digest
            with self._lock:
                created = _publish(staging, final)
        finally:
            if staging.exists():
                _remove(staging)
        try:
            copy = self.validator.validate_files(final)
        except AdapterError as exc:
            raise _changed(name, source.path, exc.message) from exc
        if not copy.same_content(source):
            if created:
                _remove(final)
            raise _changed(name, source.path, "its weights or config differ from the ones checked")
        logger.info("adapter %s stored from %s as %s", name, source.path, final.name)
        return replace(copy, source_path=source.path)

    def adopt(self, registry: Registry) -> list[str]:
        """Give each version recorded before the store existed its stored copy, when its source
        still holds the registered content; the ``NAME vN`` adopted. One whose source changed
        or vanished is logged and keeps its source (register its files again to fix it)."""
        adopted = []
        for record in registry.list():
            for version in record.versions:
                if version.store_path is not None:
                    continue
                try:
                    layout = self.admit(version.name, version.source_path)
                    if not version.same_content(layout.sha256, layout.config_sha256):
                        raise _version_changed(version, "the source holds other files now")
                except AdapterError as exc:
                    logger.error(
                        "adapter %s v%d has no stored copy and its source cannot give one: %s",
                        version.name,
                        version.version,
                        exc.message,
                    )
                    continue
                registry.set_store_path(version.name, version.version, str(layout.path))
                adopted.append(f"{version.name} v{version.version}")
        if adopted:
            logger.info("adapter store: adopted %s", ", ".join(adopted))
        return adopted

    def verify(self, version: AdapterVersion) -> None:
        """The files ``version`` loads from still hold the content recorded at registration
        (its stored copy; for a version recorded before the store existed, its source)."""
        try:
            if version.store_path is not None:
                layout = self.validator.validate_files(Path(version.store_path))
            else:
                layout = self.validator.validate(version.name, version.source_path)
        except AdapterError as exc:
            raise _version_changed(version, exc.message) from exc
        if not version.same_content(layout.sha256, layout.config_sha256):
            raise _version_changed(version, "their content differs from the registered one")

    def collect(self, in_use: Iterable[str]) -> list[Path]:
        """Remove every copy no version uses any more (and leftovers of interrupted copies);
        the ones removed. Never raises for one it cannot remove (logged)."""
        if not self.root.is_dir():
            return []
        keep = {Path(p).resolve() for p in in_use}
        removed = []
        with self._lock:
            cutoff = time.time() - self.collect_grace_s
            for entry in self.root.iterdir():
                if entry.is_symlink() or not entry.is_dir() or entry.resolve() in keep:
                    continue
                try:
                    info = entry.stat()
                    if max(info.st_mtime, info.st_ctime) > cutoff:
                        continue
                    _remove(entry)
                except OSError as exc:  # collection is housekeeping: never fail the caller
                    logger.warning("adapter store: cannot remove %s: %s", entry, exc)
                    continue
                removed.append(entry)
        if removed:
            logger.info("adapter store: removed %d unused copies", len(removed))
        return removed

    def _copy(self, source: Path, staging: Path) -> str:
        """Copy the contract's regular files of ``source`` into ``staging``; their digest."""
        limits = {
            ADAPTER_CONFIG: MAX_JSON_FILE_BYTES,
            ADAPTER_WEIGHTS: self.validator.limits.max_adapter_bytes,
            MANIFEST: MAX_JSON_FILE_BYTES,
        }
        digest = hashlib.sha256()
        try:
            directory = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError as exc:
            raise _invalid(f"cannot open adapter directory {source}: {exc.strerror}") from exc
        try:
            for file_name in ADAPTER_FILES:
                try:
                    info = os.stat(file_name, dir_fd=directory, follow_symlinks=False)
                except FileNotFoundError:
                    continue  # a missing optional file; a missing required one fails validation
                if not stat.S_ISREG(info.st_mode):
                    raise _invalid(
                        f"{source / file_name} is not a regular file (a symlink or special "
                        "file): the gateway copies regular files only; copy the real file there",
                        code="not_a_regular_file",
                    )
                file_hash = _copy_file(directory, file_name, staging / file_name, limits[file_name])
                digest.update(f"{file_name}\0{file_hash}\n".encode())
        finally:
            os.close(directory)
        return digest.hexdigest()


def _copy_file(directory: int, name: str, target: Path, limit: int) -> str:
    """Copy one file (opened without following symlinks) up to ``limit`` bytes; its sha256."""
    digest = hashlib.sha256()
    copied = 0
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=directory)
    except OSError as exc:
        raise _invalid(f"cannot open {name}: {exc.strerror}", code="not_a_regular_file") from exc
    with os.fdopen(fd, "rb") as src, target.open("xb") as dst:
        if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
            raise _invalid(f"{name} is not a regular file", code="not_a_regular_file")
        while chunk := src.read(_CHUNK):
            copied += len(chunk)
            if copied > limit:
                raise AdapterError(
                    AdapterErrorKind.TOO_LARGE,
                    f"{name} grew over the limit of {limit} bytes while it was copied",
                    code="adapter_too_large",
                    param="path",
                )
            digest.update(chunk)
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    target.chmod(_FILE_MODE)
    return digest.hexdigest()


def _publish(staging: Path, final: Path) -> bool:
    """Rename ``staging`` to ``final`` atomically; False when ``final`` already exists."""
    staging.chmod(_DIR_MODE)
    try:
        os.rename(staging, final)
    except OSError:
        if not final.is_dir():
            raise
        os.utime(final)  # same content stored before: young again, so not collected now
        return False
    return True


def _remove(directory: Path) -> None:
    """Remove a (read-only) store directory: its directories become writable first."""
    for dirpath, _dirs, _files in os.walk(directory):
        os.chmod(dirpath, 0o700)
    shutil.rmtree(directory)


def _invalid(message: str, *, code: str = "invalid_adapter_files") -> AdapterError:
    return AdapterError(AdapterErrorKind.INVALID, message, code=code, param="path")


def _version_changed(version: AdapterVersion, why: str) -> AdapterError:
    where = "stored copy" if version.store_path is not None else f"source {version.source_path}"
    return AdapterError(
        AdapterErrorKind.CONFLICT,
        f"the files of {version.name!r} v{version.version} ({where}) changed since it was "
        f"registered ({why}); register them as a new version instead",
        code="adapter_files_changed",
    )


def _changed(name: str, source: Path, why: str) -> AdapterError:
    return AdapterError(
        AdapterErrorKind.CONFLICT,
        f"the files of adapter {name!r} in {source} changed while they were registered "
        f"({why}); register them again once they stop changing",
        code="adapter_files_changed",
    )
