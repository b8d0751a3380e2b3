"""Token usage per key and model, aggregated per hour in the registry database.

:class:`UsageRecorder` is fed once per finished request (by the admission's finish,
:mod:`gateway.auth.limits`) with the tokens the engine counted, adds them up in memory, and
:meth:`UsageRecorder.flush` writes the sums into ``usage_hourly`` (one row per hour, key, model)
as increments, so replicas sharing the database add to the same rows. The app flushes every few
seconds and at shutdown (:func:`gateway.app.create_app`); ``/admin/usage``
(:mod:`gateway.api.admin.usage`) flushes before it reads, so it sees this replica's latest.

The key column holds the virtual key's id, or ``static`` (an ``--api-key`` key) or ``open`` (no
key): rows stay bounded by the keys and models the registry knows.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import BigInteger, DateTime, Integer, String, UniqueConstraint, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from adapters.db import NAME_LENGTH, Base
from gateway.auth.table_store import TableStore
from gateway.errors import GatewayError

logger = logging.getLogger(__name__)

STATIC_KEY = "static"
NO_KEY = "open"
MAX_USAGE_ROWS = 50_000
#: Tries of one flush that lost an insert race to another replica.
ADD_ATTEMPTS = 3


class UsageRow(Base):
    __tablename__ = "usage_hourly"
    __table_args__ = (UniqueConstraint("hour", "key_id", "model", name="uq_usage_hour_key_model"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    hour: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    key_id: Mapped[str] = mapped_column(String(32), index=True)
    model: Mapped[str] = mapped_column(String(NAME_LENGTH * 2))
    #: The registered adapter, or "" for the base model.
    adapter: Mapped[str] = mapped_column(String(NAME_LENGTH), index=True)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)


@dataclass(frozen=True, slots=True)
class UsageBucket:
    hour: datetime
    key_id: str
    model: str
    adapter: str


@dataclass(frozen=True, slots=True)
class UsageLine:
    hour: datetime
    key_id: str
    model: str
    adapter: str | None
    requests: int
    prompt_tokens: int
    completion_tokens: int


def hour_of(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class UsageStore(TableStore):
    """``usage_hourly`` in the registry database: increments in, filtered rows out."""

    row = UsageRow
    what = "usage"
    code = "usage_store_error"

    def add(self, sums: dict[UsageBucket, list[int]]) -> None:
        """Add ``sums`` to their rows in one transaction (one commit however many keys).

        Another replica may insert one of the same new rows first (a unique-constraint
        violation at our insert): the whole transaction is rolled back and done again, when
        that row is there to add to. Raises after the last try (the recorder keeps the sums).
        """
        for attempt in range(ADD_ATTEMPTS):
            try:
                with self._session() as session:
                    self._write(session, sums)
                return
            except GatewayError as exc:
                if not isinstance(exc.__cause__, IntegrityError) or attempt == ADD_ATTEMPTS - 1:
                    raise

    @staticmethod
    def _write(session: Session, sums: dict[UsageBucket, list[int]]) -> None:
        new_rows = []
        for bucket, (requests, prompt, completion) in sums.items():
            where = (
                (UsageRow.hour == bucket.hour)
                & (UsageRow.key_id == bucket.key_id)
                & (UsageRow.model == bucket.model)
            )
            changed = session.execute(
                update(UsageRow)
                .where(where)
                .values(
                    requests=UsageRow.requests + requests,
                    prompt_tokens=UsageRow.prompt_tokens + prompt,
                    completion_tokens=UsageRow.completion_tokens + completion,
                )
                .execution_options(synchronize_session=False)
            )
            if getattr(changed, "rowcount", 0) == 0:
                new_rows.append(
                    UsageRow(
                        hour=bucket.hour,
                        key_id=bucket.key_id,
                        model=bucket.model,
                        adapter=bucket.adapter,
                        requests=requests,
                        prompt_tokens=prompt,
                        completion_tokens=completion,
                    )
                )
        session.add_all(new_rows)

    def query(
        self,
        *,
        key_id: str | None = None,
        adapter: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[UsageLine]:
        """Rows whose hour starts in [since, until), oldest first."""
        statement = select(UsageRow).order_by(UsageRow.hour, UsageRow.key_id, UsageRow.model)
        if key_id is not None:
            statement = statement.where(UsageRow.key_id == key_id)
        if adapter is not None:
            statement = statement.where(UsageRow.adapter == adapter)
        if since is not None:
            statement = statement.where(UsageRow.hour >= hour_of(since))
        if until is not None:
            statement = statement.where(UsageRow.hour < until)
        with self._session() as session:
            rows = session.scalars(statement.limit(MAX_USAGE_ROWS)).all()
            return [
                UsageLine(
                    hour=_aware(row.hour),
                    key_id=row.key_id,
                    model=row.model,
                    adapter=row.adapter or None,
                    requests=row.requests,
                    prompt_tokens=row.prompt_tokens,
                    completion_tokens=row.completion_tokens,
                )
                for row in rows
            ]


class UsageRecorder:
    """In-memory sums between flushes; :meth:`record` is cheap and never touches the database."""

    def __init__(self, store: UsageStore) -> None:
        self.store = store
        self._sums: dict[UsageBucket, list[int]] = {}
        self._flush_lock = asyncio.Lock()

    def record(
        self,
        key_id: str,
        model: str,
        adapter: str | None,
        prompt_tokens: int | None,
        completion_tokens: int | None,
    ) -> None:
        bucket = UsageBucket(hour_of(datetime.now(UTC)), key_id, model, adapter or "")
        sums = self._sums.get(bucket)
        if sums is None:
            sums = self._sums[bucket] = [0, 0, 0]
        sums[0] += 1
        sums[1] += prompt_tokens or 0
        sums[2] += completion_tokens or 0

    async def flush(self) -> None:
        async with self._flush_lock:
            sums, self._sums = self._sums, {}
            if not sums:
                return
            try:
                await asyncio.to_thread(self.store.add, sums)
            except Exception:
                # Keep them for the next flush rather than lose them.
                for bucket, values in sums.items():
                    kept = self._sums.setdefault(bucket, [0, 0, 0])
                    for i, value in enumerate(values):
                        kept[i] += value
                raise

    async def run(self, interval_s: float) -> None:
        """Flush every ``interval_s`` until cancelled (the app's lifespan owns this task)."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.flush()
            except Exception:
                logger.exception("could not write usage records; will retry")
