"""The base of the tenant stores that keep one table each in the registry database (keys,
per-adapter limits, usage): creates its table, and turns any database failure of a transaction
into one :class:`gateway.errors.GatewayError` with the store's code
(``key_store_error``...), so that callers handle one error type.

Synchronous, like :mod:`adapters.registry`: callers in the event loop use ``asyncio.to_thread``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from adapters.db import Base, make_sessionmaker
from gateway.errors import GatewayError


class TableStore:
    #: The mapped row class whose table the store keeps.
    row: ClassVar[type[Base]]
    #: The store's name in errors: "the <what> store failed: OperationalError".
    what: ClassVar[str]
    #: Their code (``key_store_error``...).
    code: ClassVar[str]

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._sessions: sessionmaker[Session] = make_sessionmaker(engine)
        table: Any = self.row.__table__
        Base.metadata.create_all(engine, tables=[table])

    @property
    def engine(self) -> Engine:
        return self._engine

    @contextmanager
    def _session(self) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back on any error."""
        try:
            with self._sessions.begin() as session:
                yield session
        except SQLAlchemyError as exc:
            raise self._failure(exc) from exc

    def _failure(self, exc: SQLAlchemyError) -> GatewayError:
        """The error a failed transaction raises (a subclass may tell some apart)."""
        return GatewayError(f"the {self.what} store failed: {type(exc).__name__}", code=self.code)
