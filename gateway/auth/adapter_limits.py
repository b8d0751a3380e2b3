"""Per-adapter protection: limits an adapter carries whoever calls it, so one tenant's hot
adapter cannot take the whole engine (requests and tokens per minute, concurrent requests).

The ``adapter_limits`` table in the registry database, one row per model id (an adapter's public
name, or the base model's). :class:`AdapterLimitStore` reads and writes it (synchronously: callers
use ``asyncio.to_thread``); :class:`gateway.auth.tenants.Tenants` keeps a snapshot of every row,
refreshed at most once per cache TTL, and counts them with the key's limits
(:class:`gateway.auth.limits.KeyLimiter`). Set through ``/admin/adapters/{name}/limits``
(:mod:`gateway.api.admin.keys`).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Integer, String, select
from sqlalchemy.orm import Mapped, mapped_column

from adapters.db import NAME_LENGTH, Base, utcnow
from gateway.auth.keys import KeyLimits
from gateway.auth.limits import Subject
from gateway.auth.table_store import TableStore


class AdapterLimitRow(Base):
    __tablename__ = "adapter_limits"

    model: Mapped[str] = mapped_column(String(NAME_LENGTH * 2), primary_key=True)
    rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tpm: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    max_concurrent: Mapped[int | None] = mapped_column(Integer, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


def adapter_subject(model: str, limits: KeyLimits) -> Subject:
    return Subject(f"adapter:{model}", f"adapter {model}", limits)


class AdapterLimitStore(TableStore):
    row = AdapterLimitRow
    what = "adapter-limit"
    code = "limit_store_error"

    def all(self) -> dict[str, KeyLimits]:
        with self._session() as session:
            return {
                row.model: KeyLimits(rpm=row.rpm, tpm=row.tpm, max_concurrent=row.max_concurrent)
                for row in session.scalars(select(AdapterLimitRow))
            }

    def set(self, model: str, limits: KeyLimits) -> KeyLimits:
        """Replace ``model``'s limits; all None removes the row."""
        with self._session() as session:
            row = session.get(AdapterLimitRow, model)
            if not limits.any:
                if row is not None:
                    session.delete(row)
                return limits
            if row is None:
                row = AdapterLimitRow(model=model)
                session.add(row)
            row.rpm, row.tpm, row.max_concurrent = limits.rpm, limits.tpm, limits.max_concurrent
            row.updated_at = utcnow()
        return limits
