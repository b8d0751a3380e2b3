"""The ``api_keys`` table and :class:`KeyStore`, the one place virtual keys are read and written.

The table lives in the registry's database (``settings.resolved_database_url``: SQLite in the data
dir, or PostgreSQL shared by replicas) beside the adapter tables, on the same declarative base.
Secrets are never stored: only their sha256 and a short visible prefix. Methods are synchronous
and short; async callers (the admin API, the authenticator's cache in
:mod:`gateway.auth.tenants`) run them with ``asyncio.to_thread``. Hands out frozen
:class:`~gateway.auth.keys.VirtualKey` values, never ORM rows; SQLAlchemy errors become
:mod:`gateway.errors` here.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Integer, String, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Mapped, Session, mapped_column

from adapters.db import Base, make_engine, utcnow
from gateway.auth.keys import (
    IssuedKey,
    KeyLimits,
    VirtualKey,
    hash_secret,
    new_key_id,
    new_secret,
    visible_prefix,
)
from gateway.auth.table_store import TableStore
from gateway.errors import ConflictError, GatewayError, NotFoundError

KEY_NAME_LENGTH = 64


class KeyNotFoundError(NotFoundError):
    default_code = "key_not_found"


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(KEY_NAME_LENGTH), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    models: Mapped[Any] = mapped_column(JSON)
    rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tpm: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    max_concurrent: Mapped[int | None] = mapped_column(Integer, nullable=True)
    daily_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    monthly_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    rotated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes even for timezone=True columns; they were stored as UTC.
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _to_key(row: ApiKeyRow) -> VirtualKey:
    created, updated = _aware(row.created_at), _aware(row.updated_at)
    assert created is not None and updated is not None
    return VirtualKey(
        id=row.id,
        name=row.name,
        prefix=row.prefix,
        models=tuple(row.models),
        limits=KeyLimits(
            rpm=row.rpm,
            tpm=row.tpm,
            max_concurrent=row.max_concurrent,
            daily_tokens=row.daily_tokens,
            monthly_tokens=row.monthly_tokens,
        ),
        created_at=created,
        updated_at=updated,
        expires_at=_aware(row.expires_at),
        revoked_at=_aware(row.revoked_at),
        rotated_at=_aware(row.rotated_at),
        secret_hash=row.secret_hash,
    )


def _set_limits(row: ApiKeyRow, limits: KeyLimits) -> None:
    row.rpm = limits.rpm
    row.tpm = limits.tpm
    row.max_concurrent = limits.max_concurrent
    row.daily_tokens = limits.daily_tokens
    row.monthly_tokens = limits.monthly_tokens


class KeyStore(TableStore):
    """Virtual keys in the registry database."""

    row = ApiKeyRow
    what = "key"
    code = "key_store_error"

    @classmethod
    def open(cls, url: str) -> KeyStore:
        return cls(make_engine(url))

    def close(self) -> None:
        self._engine.dispose()

    def _failure(self, exc: SQLAlchemyError) -> GatewayError:
        if isinstance(exc, IntegrityError):
            return ConflictError(
                "a key with that name already exists: choose another name", code="key_exists"
            )
        return super()._failure(exc)

    @staticmethod
    def _row(session: Session, ref: str) -> ApiKeyRow:
        """By id, else by name."""
        row = session.get(ApiKeyRow, ref)
        if row is None:
            row = session.scalars(select(ApiKeyRow).where(ApiKeyRow.name == ref)).first()
        if row is None:
            raise KeyNotFoundError(f"no key with id or name {ref!r}", param="key")
        return row

    # --- writes ---------------------------------------------------------------------------------
    def create(
        self,
        name: str,
        *,
        models: tuple[str, ...],
        limits: KeyLimits,
        expires_at: datetime | None = None,
    ) -> IssuedKey:
        secret = new_secret()
        with self._session() as session:
            row = ApiKeyRow(
                id=new_key_id(),
                name=name,
                prefix=visible_prefix(secret),
                secret_hash=hash_secret(secret),
                models=list(models),
                expires_at=expires_at,
            )
            _set_limits(row, limits)
            session.add(row)
            session.flush()
            key = _to_key(row)
        return IssuedKey(key=key, secret=secret)

    def update(
        self,
        ref: str,
        *,
        name: str | None = None,
        models: tuple[str, ...] | None = None,
        limits: KeyLimits | None = None,
        expires_at: datetime | None = None,
        clear_expiry: bool = False,
    ) -> VirtualKey:
        with self._session() as session:
            row = self._row(session, ref)
            if name is not None:
                row.name = name
            if models is not None:
                row.models = list(models)
            if limits is not None:
                _set_limits(row, limits)
            if expires_at is not None or clear_expiry:
                row.expires_at = expires_at
            row.updated_at = utcnow()
            session.flush()
            return _to_key(row)

    def revoke(self, ref: str) -> VirtualKey:
        with self._session() as session:
            row = self._row(session, ref)
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            session.flush()
            return _to_key(row)

    def rotate(self, ref: str) -> IssuedKey:
        """A new secret for the same key (id, name, scope, limits, usage): the old one stops."""
        secret = new_secret()
        with self._session() as session:
            row = self._row(session, ref)
            if row.revoked_at is not None:
                raise ConflictError(
                    f"key {row.name!r} is revoked: create a new key instead", code="key_revoked"
                )
            row.secret_hash = hash_secret(secret)
            row.prefix = visible_prefix(secret)
            row.rotated_at = utcnow()
            session.flush()
            key = _to_key(row)
        return IssuedKey(key=replace(key), secret=secret)

    # --- reads ----------------------------------------------------------------------------------
    def get(self, ref: str) -> VirtualKey:
        with self._session() as session:
            return _to_key(self._row(session, ref))

    def list(self) -> list[VirtualKey]:
        with self._session() as session:
            rows = session.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at)).all()
            return [_to_key(row) for row in rows]

    def by_hash(self, secret_hash: str) -> VirtualKey | None:
        with self._session() as session:
            row = session.scalars(
                select(ApiKeyRow).where(ApiKeyRow.secret_hash == secret_hash)
            ).first()
            return None if row is None else _to_key(row)

    def any_key(self) -> bool:
        """Has any key been made? Then every /v1 request needs one (revoked keys get a 401)."""
        with self._session() as session:
            found = session.scalars(select(ApiKeyRow.id).limit(1)).first()
            return found is not None
