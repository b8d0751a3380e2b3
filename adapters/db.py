"""SQLAlchemy 2 schema of the adapter registry, and its engine/session set-up.

Three tables: ``adapters`` (one row per public name: which version is active, pinned),
``adapter_versions`` (one row per registered version: where it is, what it is, its last settled
state) and ``registry_generation`` (one row: a counter every change bumps, which is also the lock
that serializes writers; see :class:`GenerationRow`). Only portable column types and ORM
statements are used, so the same code runs on the default SQLite file in the data dir and on
PostgreSQL (``postgresql+psycopg://...``, driver ``psycopg`` 3); columns added later are added
by :func:`create_schema` with ``ALTER TABLE``, under an advisory lock on PostgreSQL so replicas
starting together do not race.

Used only by :mod:`adapters.registry`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    sessionmaker,
)

from adapters.contract import MAX_NAME_LENGTH

NAME_LENGTH = MAX_NAME_LENGTH
PATH_LENGTH = 4096


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class AdapterRow(Base):
    __tablename__ = "adapters"

    name: Mapped[str] = mapped_column(String(NAME_LENGTH), primary_key=True)
    active_version: Mapped[int] = mapped_column(Integer)
    pinned: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )
    versions: Mapped[list[AdapterVersionRow]] = relationship(
        back_populates="adapter",
        cascade="all, delete-orphan",
        order_by="AdapterVersionRow.version",
        lazy="selectin",
    )


class AdapterVersionRow(Base):
    __tablename__ = "adapter_versions"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_adapter_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(
        String(NAME_LENGTH), ForeignKey("adapters.name", ondelete="CASCADE"), index=True
    )
    version: Mapped[int] = mapped_column(Integer)
    base_model: Mapped[str] = mapped_column(String(PATH_LENGTH))
    source_path: Mapped[str] = mapped_column(String(PATH_LENGTH))
    rank: Mapped[int] = mapped_column(Integer)
    alpha: Mapped[float] = mapped_column(Float)
    target_modules: Mapped[Any] = mapped_column(JSON)
    sha256: Mapped[str] = mapped_column(String(64))
    config_sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    manifest: Mapped[Any | None] = mapped_column(JSON, nullable=True)
    #: The validated read-only copy the engine loads (adapters.store); NULL for a version
    #: registered before the store existed (loaded from ``source_path``).
    store_path: Mapped[str | None] = mapped_column(String(PATH_LENGTH), nullable=True)
    state: Mapped[str] = mapped_column(String(16))
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )
    adapter: Mapped[AdapterRow] = relationship(back_populates="versions")


class GenerationRow(Base):
    """The registry's single generation row (``id`` = :data:`GENERATION_ID`).

    Every write transaction that changes what should be served (register, restore, pin, unpin,
    delete, ...) first increments ``value``: a replica polls it (one primary-key read) to learn
    whether anything changed since it last looked. Updating the row first also takes its row
    lock (PostgreSQL) or the write lock (SQLite) before anything is read, so concurrent writers,
    in this process or in other replicas, run one after another and never hand out the same
    version number twice.
    """

    __tablename__ = "registry_generation"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


GENERATION_ID = 1
#: ``pg_advisory_xact_lock`` key held while the schema is created or migrated.
SCHEMA_LOCK_KEY = 0x6C6F7261  # "lora"


def make_engine(url: str) -> Engine:
    """An engine for ``url``; for SQLite, the parent directory is created and foreign keys on."""
    parsed = make_url(url)
    connect_args: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        # The registry is called from worker threads (asyncio.to_thread); a waiting writer
        # retries for up to 30 s instead of failing with "database is locked".
        connect_args = {"check_same_thread": False, "timeout": 30}
    engine = create_engine(url, connect_args=connect_args, pool_pre_ping=True)
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def create_schema(engine: Engine) -> None:
    """Create missing tables and the generation row, and add the columns added since a database
    was created. One transaction holding a lock (an advisory lock on PostgreSQL, the write lock
    on SQLite), so processes that start together against an empty database do not both create or
    alter the same table."""
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
        elif engine.dialect.name == "sqlite":
            # pysqlite runs DDL outside any transaction unless one is open: take the write lock
            # now, so a second process waits (busy timeout) and then finds the tables made.
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        Base.metadata.create_all(connection)
        _add_missing_columns(connection)
        present = connection.scalar(
            select(GenerationRow.id).where(GenerationRow.id == GENERATION_ID)
        )
        if present is None:
            connection.execute(insert(GenerationRow).values(id=GENERATION_ID, value=0))


def _add_missing_columns(connection: Connection) -> None:
    columns = {c["name"] for c in inspect(connection).get_columns(AdapterVersionRow.__tablename__)}
    if "store_path" not in columns:
        connection.execute(
            text(
                f"ALTER TABLE {AdapterVersionRow.__tablename__} "
                f"ADD COLUMN store_path VARCHAR({PATH_LENGTH})"
            )
        )
