"""The tables gateway replicas share their engines' slots through (see
:mod:`gateway.placement.board`).

* ``placement_clock``: one row whose counter every placement change bumps first. Updating it
  takes its row lock (PostgreSQL) or the write lock (SQLite), so placement changes of every
  replica run one after another, and the counter orders them: a replica that has applied
  everything up to ``seq`` says so in its heartbeat (``seen_seq``).
* ``placements``: one row per adapter version on one engine (``engine`` is the engine's URL,
  the identity replicas agree on): ``loading`` (a replica is loading it), ``loaded``, or
  ``draining`` (a replica wants to unload it and waits until every live replica has seen that
  and has nothing in flight on it).
* ``placement_replicas``: one row per gateway process: its last heartbeat (wall time), the last
  ``seq`` it applied and what it has in flight (``holds``: ``"<engine url> <upstream>"``).

They live in the registry's database (:mod:`adapters.db`'s metadata, created with the registry's
tables by :func:`adapters.db.create_schema`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Float, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from adapters.db import Base

CLOCK_ID = 1
URL_LENGTH = 512
UPSTREAM_LENGTH = 256
REPLICA_ID_LENGTH = 128


class PlacementState:
    LOADING = "loading"
    LOADED = "loaded"
    DRAINING = "draining"


class PlacementClockRow(Base):
    __tablename__ = "placement_clock"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)


class PlacementRow(Base):
    __tablename__ = "placements"

    engine: Mapped[str] = mapped_column(String(URL_LENGTH), primary_key=True)
    upstream: Mapped[str] = mapped_column(String(UPSTREAM_LENGTH), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    owner: Mapped[str] = mapped_column(String(REPLICA_ID_LENGTH))
    seq: Mapped[int] = mapped_column(BigInteger)
    #: Wall time (seconds since the epoch) of the last change.
    updated_at: Mapped[float] = mapped_column(Float)


class ReplicaRow(Base):
    __tablename__ = "placement_replicas"

    id: Mapped[str] = mapped_column(String(REPLICA_ID_LENGTH), primary_key=True)
    heartbeat_at: Mapped[float] = mapped_column(Float)
    seen_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    holds: Mapped[Any] = mapped_column(JSON, default=list)
