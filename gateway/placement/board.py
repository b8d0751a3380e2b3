"""The placement board: how gateway replicas in front of the same engines share their slots.

One process alone (the embedded default, SQLite) needs nothing shared: :class:`PlacementBoard`
grants every claim and release. Replicas that share a registry database (PostgreSQL, or
``serve --workers``) use :class:`SharedBoard`, which keeps the engines' placements in that
database (:mod:`gateway.placement.board_rows`):

* **Load**: before loading a version onto an engine, a replica *claims* the place
  (:meth:`SharedBoard.claim`): in one transaction, under the placement clock's lock, it finds the
  version already there (no load needed), or inserts a ``loading`` row if the engine has fewer
  rows than slots, else raises :class:`PlacementTaken` (the engine is full of other replicas'
  versions, or another replica is loading or draining this one there: wait and try again). After
  the engine loaded it: :meth:`~SharedBoard.loaded`; after a failure: :meth:`~SharedBoard.abandon`.
  So no engine ever holds more versions than its slots, whoever loads them.
* **Unload** (eviction, swap, unload, delete): :meth:`SharedBoard.release` marks the row
  ``draining`` and waits until every live replica has applied that mark (its heartbeat's
  ``seen_seq``) and has nothing in flight on it (its ``holds``). A replica that applies the
  mark stops routing there at once, so after that wait nobody can start on it: the caller
  unloads it and calls :meth:`~SharedBoard.removed`. If a replica still uses it after
  ``release_timeout_s``, the row goes back to ``loaded`` and release answers False: the caller
  leaves the version loaded (the slot stays taken).
* **Heartbeat**: each replica's sync loop (:mod:`gateway.lifecycle.replicas`) reads the board
  (:meth:`~SharedBoard.read`), applies it to its slot table, then writes its heartbeat
  (:meth:`~SharedBoard.heartbeat`). A replica whose heartbeat is older than ``dead_after_s`` is
  dead: its holds no longer count, its ``loading`` rows are dropped and its ``draining`` rows go
  back to ``loaded`` (:meth:`~SharedBoard.expire_dead`). What an engine really holds wins over
  rows (:meth:`~SharedBoard.reconcile`, after an engine restart and periodically).

The hot path of a request for a resident version never calls the board: it reads the replica's
own slot table. Liveness uses wall clocks: replicas on several machines need them in step (NTP)
to well within ``dead_after_s``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Engine as SQLEngine
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from adapters.db import create_schema, make_engine, make_sessionmaker
from gateway.errors import EngineUnavailableError
from gateway.placement.board_rows import (
    CLOCK_ID,
    PlacementClockRow,
    PlacementRow,
    PlacementState,
    ReplicaRow,
)

T = TypeVar("T")

#: A replica row silent for this long is deleted (it is long gone).
FORGET_REPLICA_AFTER_S = 3600.0


class PlacementTaken(Exception):
    """No place now: the engine's slots are taken by other replicas' versions, or another
    replica is loading or draining this version there. Wait for a slot to free and try again."""


def new_replica_id() -> str:
    """A name for this process on the board: host, pid and a random tag."""
    return f"{socket.gethostname()[:64]}-{os.getpid()}-{secrets.token_hex(3)}"


def hold_key(engine_url: str, upstream: str) -> str:
    return f"{engine_url} {upstream}"


@dataclass(frozen=True, slots=True)
class Placement:
    engine: str
    upstream: str
    state: str
    owner: str
    updated_at: float


@dataclass(frozen=True, slots=True)
class ReplicaInfo:
    id: str
    heartbeat_at: float
    seen_seq: int
    holds: frozenset[str]


@dataclass(frozen=True, slots=True)
class BoardView:
    """The board as one replica read it: every row changed at or before ``seq``."""

    seq: int
    placements: tuple[Placement, ...]
    replicas: tuple[ReplicaInfo, ...]
    #: The reader's monotonic clock when the read began.
    read_at: float


class PlacementBoard:
    """One process alone: nothing is shared, every claim and release is granted."""

    shared = False
    replica_id = "local"

    async def claim(self, engine_url: str, upstream: str, capacity: int) -> bool:
        """True: load ``upstream`` onto the engine now (the place is ours); False: it is
        there already (loaded by another replica). :class:`PlacementTaken`: wait."""
        return True

    async def loaded(self, engine_url: str, upstream: str) -> None:
        """Our load of ``upstream`` onto the engine succeeded."""

    async def abandon(self, engine_url: str, upstream: str) -> None:
        """Our load of ``upstream`` onto the engine failed: give the place back."""

    async def release(self, engine_url: str, upstream: str) -> bool:
        """True: unload ``upstream`` from the engine now (no replica uses it or can start on
        it); False: another replica still uses it, leave it loaded."""
        return True

    async def removed(self, engine_url: str, upstream: str) -> None:
        """``upstream`` is unloaded from the engine (or the engine no longer has it)."""

    def touched_since(self, engine_url: str, upstream: str, since: float) -> bool:
        """This replica changed the place of ``upstream`` on the engine after ``since``."""
        return False

    async def close(self) -> None:
        """Forget this replica (a clean stop: no wait for its heartbeat to go stale)."""


class SharedBoard(PlacementBoard):
    shared = True

    def __init__(
        self,
        sql_engine: SQLEngine,
        replica_id: str,
        *,
        dead_after_s: float = 5.0,
        release_timeout_s: float = 3.0,
        poll_s: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.replica_id = replica_id
        self.dead_after_s = dead_after_s
        self.release_timeout_s = release_timeout_s
        self.poll_s = poll_s
        self._engine = sql_engine
        self._sessions = make_sessionmaker(sql_engine)
        self._clock = clock
        self._wall = wall
        #: (engine url, upstream) -> our clock when this replica last changed that place.
        self._touched: dict[tuple[str, str], float] = {}

    @classmethod
    def open(
        cls,
        url: str,
        replica_id: str,
        *,
        dead_after_s: float = 5.0,
        release_timeout_s: float = 3.0,
        poll_s: float = 0.25,
    ) -> SharedBoard:
        """A board in the database at ``url`` (its tables and clock row created when
        missing); blocking: call it from a thread."""
        engine = make_engine(url)
        create_schema(engine)
        board = cls(
            engine,
            replica_id,
            dead_after_s=dead_after_s,
            release_timeout_s=release_timeout_s,
            poll_s=poll_s,
        )
        board._run_sync(board._ensure_clock)
        return board

    @staticmethod
    def _ensure_clock(session: Session) -> None:
        if session.get(PlacementClockRow, CLOCK_ID) is None:
            session.add(PlacementClockRow(id=CLOCK_ID, seq=0))

    def dispose(self) -> None:
        self._engine.dispose()

    # --- plumbing ---------------------------------------------------------------------------
    async def _run(self, work: Callable[[Session], T]) -> T:
        return await asyncio.to_thread(self._run_sync, work)

    def _run_sync(self, work: Callable[[Session], T]) -> T:
        for attempt in range(3):
            try:
                with self._sessions.begin() as session:
                    return work(session)
            except (IntegrityError, OperationalError) as exc:
                # Two replicas created the clock row, or a dropped connection: once more.
                if attempt == 2:
                    raise EngineUnavailableError(
                        "the placement board (the registry database) is unreachable",
                        detail=str(exc).splitlines()[0],
                    ) from exc
            except SQLAlchemyError as exc:
                raise EngineUnavailableError(
                    "the placement board (the registry database) failed",
                    detail=str(exc).splitlines()[0],
                ) from exc
        raise AssertionError("unreachable")

    def _bump(self, session: Session) -> int:
        """Take the placement lock and return the new sequence number."""
        seq = session.scalar(
            update(PlacementClockRow)
            .where(PlacementClockRow.id == CLOCK_ID)
            .values(seq=PlacementClockRow.seq + 1)
            .returning(PlacementClockRow.seq)
        )
        if seq is None:
            session.add(PlacementClockRow(id=CLOCK_ID, seq=1))
            session.flush()
            return 1
        return int(seq)

    def _touch(self, engine_url: str, upstream: str) -> None:
        self._touched[(engine_url, upstream)] = self._clock()

    def touched_since(self, engine_url: str, upstream: str, since: float) -> bool:
        return self._touched.get((engine_url, upstream), float("-inf")) >= since

    def _live(self, replicas: Iterable[ReplicaRow | ReplicaInfo]) -> set[str]:
        cutoff = self._wall() - self.dead_after_s
        return {r.id for r in replicas if r.heartbeat_at >= cutoff} | {self.replica_id}

    def _live_ids(self, session: Session) -> set[str]:
        return self._live(session.scalars(select(ReplicaRow)))

    # --- loads ------------------------------------------------------------------------------
    async def claim(self, engine_url: str, upstream: str, capacity: int) -> bool:
        def work(session: Session) -> bool:
            seq = self._bump(session)
            row = session.get(PlacementRow, (engine_url, upstream))
            now = self._wall()
            if row is not None:
                if row.state == PlacementState.LOADED:
                    return False
                if row.owner in self._live_ids(session) and row.owner != self.replica_id:
                    raise PlacementTaken(f"another replica is {row.state} it there")
                # Ours from before, or a dead replica's: take it over (loading again is safe:
                # an engine that has it already says so, and that counts as loaded).
                row.state, row.owner, row.seq, row.updated_at = (
                    PlacementState.LOADING,
                    self.replica_id,
                    seq,
                    now,
                )
                return True
            used = session.scalar(
                select(func.count())
                .select_from(PlacementRow)
                .where(PlacementRow.engine == engine_url)
            )
            if (used or 0) >= capacity:
                raise PlacementTaken(f"all {capacity} slots of the engine are taken")
            session.add(
                PlacementRow(
                    engine=engine_url,
                    upstream=upstream,
                    state=PlacementState.LOADING,
                    owner=self.replica_id,
                    seq=seq,
                    updated_at=now,
                )
            )
            return True

        self._touch(engine_url, upstream)
        try:
            return await self._run(work)
        finally:
            self._touch(engine_url, upstream)

    async def loaded(self, engine_url: str, upstream: str) -> None:
        await self._set(engine_url, upstream, PlacementState.LOADED, insert=True)

    async def abandon(self, engine_url: str, upstream: str) -> None:
        def work(session: Session) -> None:
            self._bump(session)
            session.execute(
                delete(PlacementRow).where(
                    PlacementRow.engine == engine_url,
                    PlacementRow.upstream == upstream,
                    PlacementRow.owner == self.replica_id,
                    PlacementRow.state == PlacementState.LOADING,
                )
            )

        self._touch(engine_url, upstream)
        await self._run(work)

    async def _set(self, engine_url: str, upstream: str, state: str, *, insert: bool) -> None:
        def work(session: Session) -> None:
            seq = self._bump(session)
            row = session.get(PlacementRow, (engine_url, upstream))
            if row is None:
                if insert:
                    session.add(
                        PlacementRow(
                            engine=engine_url,
                            upstream=upstream,
                            state=state,
                            owner=self.replica_id,
                            seq=seq,
                            updated_at=self._wall(),
                        )
                    )
                return
            row.state, row.owner, row.seq, row.updated_at = (
                state,
                self.replica_id,
                seq,
                self._wall(),
            )

        self._touch(engine_url, upstream)
        await self._run(work)

    # --- unloads ----------------------------------------------------------------------------
    async def release(self, engine_url: str, upstream: str) -> bool:
        def mark(session: Session) -> int | None:
            seq = self._bump(session)
            row = session.get(PlacementRow, (engine_url, upstream))
            if row is None:
                return seq  # nothing recorded: nobody routes there through the board
            live = self._live_ids(session)
            if row.owner != self.replica_id and row.owner in live:
                if row.state == PlacementState.LOADING:
                    return None  # another replica is loading it: it is theirs now
                if row.state == PlacementState.DRAINING:
                    return None  # another replica is unloading it
            row.state, row.owner, row.seq, row.updated_at = (
                PlacementState.DRAINING,
                self.replica_id,
                seq,
                self._wall(),
            )
            return seq

        self._touch(engine_url, upstream)
        seq = await self._run(mark)
        if seq is None:
            return False
        key = hold_key(engine_url, upstream)
        deadline = self._clock() + self.release_timeout_s
        while True:
            replicas = await self._run(_read_replicas)
            live = self._live(replicas)
            others = [r for r in replicas if r.id in live and r.id != self.replica_id]
            if all(r.seen_seq >= seq and key not in r.holds for r in others):
                return True
            if self._clock() >= deadline:
                await self._set(engine_url, upstream, PlacementState.LOADED, insert=False)
                return False
            await asyncio.sleep(self.poll_s)

    async def removed(self, engine_url: str, upstream: str) -> None:
        def work(session: Session) -> None:
            self._bump(session)
            session.execute(
                delete(PlacementRow).where(
                    PlacementRow.engine == engine_url, PlacementRow.upstream == upstream
                )
            )

        self._touch(engine_url, upstream)
        await self._run(work)

    # --- the sync loop's side ---------------------------------------------------------------
    async def read(self) -> BoardView:
        read_at = self._clock()

        def work(session: Session) -> BoardView:
            # The counter first: every change up to it is committed, so the rows read after
            # it show at least those changes.
            seq = session.scalar(
                select(PlacementClockRow.seq).where(PlacementClockRow.id == CLOCK_ID)
            )
            placements = tuple(
                Placement(r.engine, r.upstream, r.state, r.owner, r.updated_at)
                for r in session.scalars(select(PlacementRow))
            )
            replicas = tuple(_replica_out(r) for r in session.scalars(select(ReplicaRow)))
            return BoardView(int(seq or 0), placements, replicas, read_at)

        return await self._run(work)

    async def heartbeat(self, seen_seq: int, holds: Collection[str]) -> None:
        def work(session: Session) -> None:
            row = session.get(ReplicaRow, self.replica_id)
            if row is None:
                session.add(
                    ReplicaRow(
                        id=self.replica_id,
                        heartbeat_at=self._wall(),
                        seen_seq=seen_seq,
                        holds=sorted(holds),
                    )
                )
                return
            row.heartbeat_at = self._wall()
            row.seen_seq = max(row.seen_seq, seen_seq)
            row.holds = sorted(holds)

        await self._run(work)

    async def expire_dead(self, view: BoardView) -> int:
        """Give back what dead replicas held: their ``loading`` rows go, their ``draining``
        rows are ``loaded`` again; replicas silent for an hour are forgotten. Returns how many
        rows changed."""
        live = self._live(view.replicas)
        stale = [
            p for p in view.placements if p.owner not in live and p.state != PlacementState.LOADED
        ]
        gone = [
            r.id for r in view.replicas if r.heartbeat_at < self._wall() - FORGET_REPLICA_AFTER_S
        ]
        if not stale and not gone:
            return 0

        def work(session: Session) -> int:
            seq = self._bump(session)
            live_now = self._live_ids(session)
            changed = 0
            for placement in stale:
                row = session.get(PlacementRow, (placement.engine, placement.upstream))
                if row is None or row.owner in live_now or row.state == PlacementState.LOADED:
                    continue
                if row.state == PlacementState.LOADING:
                    session.delete(row)
                else:
                    row.state, row.seq, row.updated_at = PlacementState.LOADED, seq, self._wall()
                changed += 1
            if gone:
                session.execute(delete(ReplicaRow).where(ReplicaRow.id.in_(gone)))
            return changed

        return await self._run(work)

    async def reconcile(
        self,
        engine_url: str,
        listed: Collection[str],
        listed_at: float,
        known: Collection[str],
    ) -> int:
        """Make the rows of one engine match what it lists (``listed``, read at wall time
        ``listed_at``): ``loaded`` rows older than the listing that it does not list go (it
        restarted, or someone unloaded them); versions it lists that have no row (a replica
        died before recording its load) are recorded as ``loaded`` when ``known`` (registered).
        Returns how many rows changed."""

        def work(session: Session) -> int:
            seq = self._bump(session)
            rows = {
                r.upstream: r
                for r in session.scalars(
                    select(PlacementRow).where(PlacementRow.engine == engine_url)
                )
            }
            changed = 0
            for upstream, row in rows.items():
                if (
                    row.state == PlacementState.LOADED
                    and upstream not in listed
                    and row.updated_at < listed_at
                ):
                    session.delete(row)
                    changed += 1
            for upstream in listed:
                if upstream not in rows and upstream in known:
                    session.add(
                        PlacementRow(
                            engine=engine_url,
                            upstream=upstream,
                            state=PlacementState.LOADED,
                            owner=self.replica_id,
                            seq=seq,
                            updated_at=self._wall(),
                        )
                    )
                    changed += 1
            return changed

        return await self._run(work)

    async def close(self) -> None:
        def work(session: Session) -> None:
            session.execute(delete(ReplicaRow).where(ReplicaRow.id == self.replica_id))

        await self._run(work)


def _read_replicas(session: Session) -> list[ReplicaInfo]:
    return [_replica_out(row) for row in session.scalars(select(ReplicaRow))]


def _replica_out(row: ReplicaRow) -> ReplicaInfo:
    return ReplicaInfo(
        id=row.id,
        heartbeat_at=row.heartbeat_at,
        seen_seq=int(row.seen_seq or 0),
        holds=frozenset(row.holds or ()),
    )
