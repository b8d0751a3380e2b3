"""The adapter registry: the persistent source of truth of which adapters exist.

One :class:`Registry` per process wraps a SQLAlchemy engine (SQLite in the data dir by default,
or any URL such as PostgreSQL) and hands out plain frozen dataclasses, never ORM objects. Its
methods are synchronous and short; the async lifecycle calls them through
``asyncio.to_thread`` so the event loop never waits on disk (sync SQLAlchemy rather than the
async extension keeps one code path for every database driver and needs no extra package).

Per name: the active version and whether it is pinned. Per version: what was validated at
registration (paths, rank, hashes, ...), its manifest (whose ``sampling_defaults`` the admin API
may replace), and its last settled lifecycle state with its error.
Every change of what should be served runs through :meth:`Registry._write`, which first bumps
the generation counter (:class:`adapters.db.GenerationRow`): that serializes writers across
processes (no version number is handed out twice) and lets another replica ask "did anything
change?" with one read, :meth:`Registry.generation`. Recording a version's settled state does not
count as a change (it is what an engine did, not what should be served).
Called by the gateway's adapter lifecycle only. SQLAlchemy errors become
:class:`adapters.errors.AdapterError` here (CONFLICT for a lost race, INTERNAL otherwise).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from adapters.db import (
    GENERATION_ID,
    AdapterRow,
    AdapterVersionRow,
    GenerationRow,
    create_schema,
    make_engine,
    make_sessionmaker,
    utcnow,
)
from adapters.errors import AdapterError, AdapterErrorKind
from adapters.layout import AdapterLayout
from adapters.sampling import SAMPLING_DEFAULTS_KEY
from adapters.state import SETTLED, AdapterState

T = TypeVar("T")


#: What :func:`upstream_name` writes, to read the public name back out of an engine's answer.
UPSTREAM_NAME_PATTERN = r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)@v(?P<version>[0-9]+)\.[0-9a-f]{12}"


def upstream_name(name: str, version: int, sha256: str, config_sha256: str) -> str:
    """The LoRA name the engine knows a version by: ``NAME@vN.<content tag>``.

    ``@`` cannot occur in public names. The tag (12 hex digits over both hashes) means an engine
    that outlived a wiped registry never serves its stale ``NAME@v1`` for a new ``NAME`` v1.
    """
    tag = hashlib.sha256(f"{sha256}:{config_sha256}".encode()).hexdigest()[:12]
    return f"{name}@v{version}.{tag}"


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes even for timezone=True columns; they were stored as UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class NewVersion:
    """What registration persists about a validated adapter directory."""

    base_model: str
    source_path: str
    rank: int
    alpha: float
    target_modules: tuple[str, ...] | str
    sha256: str
    config_sha256: str
    size_bytes: int
    manifest: dict[str, Any] | None = None
    #: The validated read-only copy (:mod:`adapters.store`) the engine loads.
    store_path: str | None = None

    @classmethod
    def from_layout(cls, layout: AdapterLayout, base_model: str) -> NewVersion:
        """A stored copy's layout records both paths; a plain one is its own source."""
        return cls(
            base_model=base_model,
            source_path=str(layout.source_path or layout.path),
            store_path=str(layout.path) if layout.source_path is not None else None,
            rank=layout.max_rank,
            alpha=layout.lora_alpha,
            target_modules=layout.target_modules,
            sha256=layout.sha256,
            config_sha256=layout.config_sha256,
            size_bytes=layout.weights_size,
            manifest=layout.manifest,
        )


@dataclass(frozen=True, slots=True)
class AdapterVersion:
    name: str
    version: int
    base_model: str
    source_path: str
    rank: int
    alpha: float
    target_modules: tuple[str, ...] | str
    sha256: str
    config_sha256: str
    size_bytes: int
    manifest: dict[str, Any] | None
    state: AdapterState
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    store_path: str | None = None

    @property
    def load_path(self) -> str:
        """Where an engine loads this version from: the validated copy in the store. A version
        recorded before the store existed has none and is loaded from its source."""
        return self.store_path or self.source_path

    @property
    def upstream_name(self) -> str:
        return upstream_name(self.name, self.version, self.sha256, self.config_sha256)

    @property
    def sampling_defaults(self) -> dict[str, Any] | None:
        """The version's default sampling (its manifest's key, or what an admin set)."""
        found = (self.manifest or {}).get(SAMPLING_DEFAULTS_KEY)
        return found if isinstance(found, dict) and found else None

    def same_content(self, sha256: str, config_sha256: str) -> bool:
        return self.sha256 == sha256 and self.config_sha256 == config_sha256


@dataclass(frozen=True, slots=True)
class AdapterRecord:
    name: str
    active_version: int
    pinned: bool
    created_at: datetime
    updated_at: datetime
    versions: tuple[AdapterVersion, ...]

    @property
    def active(self) -> AdapterVersion:
        found = self.version(self.active_version)
        if found is None:  # guarded by set_active; a hand-edited database could break it
            raise AdapterError(
                AdapterErrorKind.INTERNAL,
                f"adapter {self.name!r} has no active version {self.active_version}",
                code="registry_inconsistent",
            )
        return found

    def version(self, number: int) -> AdapterVersion | None:
        return next((v for v in self.versions if v.version == number), None)

    @property
    def latest_version(self) -> int:
        return max(v.version for v in self.versions)


def _version_out(row: AdapterVersionRow) -> AdapterVersion:
    targets = row.target_modules
    return AdapterVersion(
        name=row.name,
        version=row.version,
        base_model=row.base_model,
        source_path=row.source_path,
        rank=row.rank,
        alpha=row.alpha,
        target_modules=targets if isinstance(targets, str) else tuple(targets),
        sha256=row.sha256,
        config_sha256=row.config_sha256,
        size_bytes=row.size_bytes,
        manifest=row.manifest,
        state=AdapterState(row.state),
        last_error=row.last_error,
        created_at=_aware(row.created_at),
        updated_at=_aware(row.updated_at),
        store_path=row.store_path,
    )


def _record_out(row: AdapterRow) -> AdapterRecord:
    return AdapterRecord(
        name=row.name,
        active_version=row.active_version,
        pinned=row.pinned,
        created_at=_aware(row.created_at),
        updated_at=_aware(row.updated_at),
        versions=tuple(_version_out(v) for v in row.versions),
    )


class Registry:
    """Synchronous, thread-safe access to the registry database."""

    def __init__(self, url: str) -> None:
        self.url = url
        with self._translate("open"):
            self._engine = make_engine(url)
            create_schema(self._engine)
        self._sessions = make_sessionmaker(self._engine)

    def close(self) -> None:
        self._engine.dispose()

    @contextmanager
    def _translate(self, what: str) -> Iterator[None]:
        try:
            yield
        except IntegrityError as exc:
            raise AdapterError(
                AdapterErrorKind.CONFLICT,
                f"registry {what} conflicts with a concurrent change: {exc.orig}",
                code="registry_conflict",
            ) from exc
        except SQLAlchemyError as exc:
            raise AdapterError(
                AdapterErrorKind.INTERNAL,
                f"registry database error during {what}: {exc}",
                code="registry_error",
            ) from exc

    def _run(self, what: str, work: Callable[[Session], T]) -> T:
        with self._translate(what), self._sessions.begin() as session:
            return work(session)

    def _write(self, what: str, work: Callable[[Session], T]) -> T:
        """Run ``work`` in a transaction that first bumps the generation: the row lock it takes
        makes concurrent writers (threads, replicas) wait for each other before reading."""

        def bumped(session: Session) -> T:
            session.execute(
                update(GenerationRow)
                .where(GenerationRow.id == GENERATION_ID)
                .values(value=GenerationRow.value + 1)
            )
            return work(session)

        return self._run(what, bumped)

    def generation(self) -> int:
        """A counter that grows with every change of the adapters, versions, active versions or
        pins: equal values mean nothing changed in between (one primary-key read)."""

        def work(session: Session) -> int:
            value = session.scalar(
                select(GenerationRow.value).where(GenerationRow.id == GENERATION_ID)
            )
            return int(value or 0)

        return self._run("generation", work)

    @staticmethod
    def _row(session: Session, name: str) -> AdapterRow:
        row = session.get(AdapterRow, name)
        if row is None:
            raise AdapterError(
                AdapterErrorKind.NOT_FOUND,
                f"no adapter named {name!r} is registered",
                code="adapter_not_found",
                param="name",
            )
        return row

    def list(self) -> list[AdapterRecord]:
        def work(session: Session) -> list[AdapterRecord]:
            rows = session.scalars(select(AdapterRow).order_by(AdapterRow.name))
            return [_record_out(row) for row in rows]

        return self._run("list", work)

    def get(self, name: str) -> AdapterRecord | None:
        def work(session: Session) -> AdapterRecord | None:
            row = session.get(AdapterRow, name)
            return _record_out(row) if row is not None else None

        return self._run("get", work)

    def add(
        self, name: str, new: NewVersion, *, pinned: bool, activate: bool = True
    ) -> AdapterRecord:
        """Add ``new`` as the next version of ``name`` (version 1 for a new name)."""

        def work(session: Session) -> AdapterRecord:
            row = session.get(AdapterRow, name)
            latest = session.scalar(
                select(func.max(AdapterVersionRow.version)).where(AdapterVersionRow.name == name)
            )
            number = (latest or 0) + 1
            if row is None:
                row = AdapterRow(name=name, active_version=number, pinned=pinned)
                session.add(row)
            elif activate:
                row.active_version = number
                row.pinned = pinned
            row.versions.append(
                AdapterVersionRow(
                    name=name,
                    version=number,
                    base_model=new.base_model,
                    source_path=new.source_path,
                    rank=new.rank,
                    alpha=new.alpha,
                    target_modules=(
                        new.target_modules
                        if isinstance(new.target_modules, str)
                        else list(new.target_modules)
                    ),
                    sha256=new.sha256,
                    config_sha256=new.config_sha256,
                    size_bytes=new.size_bytes,
                    manifest=new.manifest,
                    store_path=new.store_path,
                    state=AdapterState.REGISTERED.value,
                )
            )
            session.flush()
            row.updated_at = utcnow()
            return _record_out(row)

        return self._write("add", work)

    def set_active(self, name: str, version: int) -> AdapterRecord:
        def work(session: Session) -> AdapterRecord:
            row = self._row(session, name)
            if not any(v.version == version for v in row.versions):
                raise AdapterError(
                    AdapterErrorKind.NOT_FOUND,
                    f"adapter {name!r} has no version {version}",
                    code="adapter_not_found",
                    param="version",
                )
            row.active_version = version
            row.updated_at = utcnow()
            return _record_out(row)

        return self._write("set_active", work)

    def set_pinned(self, name: str, pinned: bool) -> AdapterRecord:
        def work(session: Session) -> AdapterRecord:
            row = self._row(session, name)
            row.pinned = pinned
            row.updated_at = utcnow()
            return _record_out(row)

        return self._write("set_pinned", work)

    def set_sampling_defaults(
        self, name: str, version: int, defaults: dict[str, Any] | None
    ) -> AdapterRecord:
        """Replace (or, with None, clear) a version's sampling defaults: the key of its
        recorded manifest. The adapter's files are not touched."""

        def work(session: Session) -> AdapterRecord:
            row = self._row(session, name)
            found = next((v for v in row.versions if v.version == version), None)
            if found is None:
                raise AdapterError(
                    AdapterErrorKind.NOT_FOUND,
                    f"adapter {name!r} has no version {version}",
                    code="adapter_not_found",
                    param="version",
                )
            manifest = dict(found.manifest or {})
            if defaults:
                manifest[SAMPLING_DEFAULTS_KEY] = dict(defaults)
            else:
                manifest.pop(SAMPLING_DEFAULTS_KEY, None)
            found.manifest = manifest or None  # a new object: the JSON column sees the change
            found.updated_at = row.updated_at = utcnow()
            session.flush()
            return _record_out(row)

        return self._write("set_sampling_defaults", work)

    def set_state(
        self, name: str, version: int, state: AdapterState, last_error: str | None = None
    ) -> None:
        """Record a settled state; ``last_error`` is kept until the next failure clears it."""
        if state not in SETTLED:
            raise ValueError(f"only settled states are persisted, not {state}")

        def work(session: Session) -> None:
            row = session.scalar(
                select(AdapterVersionRow).where(
                    AdapterVersionRow.name == name, AdapterVersionRow.version == version
                )
            )
            if row is None:
                return  # deleted meanwhile: nothing to record
            row.state = state.value
            if state is AdapterState.FAILED or last_error is not None:
                row.last_error = last_error
            row.updated_at = utcnow()

        self._run("set_state", work)

    def set_store_path(self, name: str, version: int, store_path: str) -> None:
        """Record the stored copy of a version registered before the store existed."""

        def work(session: Session) -> None:
            row = session.scalar(
                select(AdapterVersionRow).where(
                    AdapterVersionRow.name == name, AdapterVersionRow.version == version
                )
            )
            if row is not None:
                row.store_path = store_path
                row.updated_at = utcnow()

        self._run("set_store_path", work)

    def delete(self, name: str) -> bool:
        def work(session: Session) -> bool:
            row = session.get(AdapterRow, name)
            if row is None:
                return False
            session.delete(row)
            return True

        return self._write("delete", work)
