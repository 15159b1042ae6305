"""How several processes share one database: SQLite's connection and transaction hooks, inserts that
keep the row another writer stored first, and one more try for a write that lost a race."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, cast

from sqlalchemy import CursorResult, Executable, inspect
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Session

from coe.errors import StoreError


def sqlite_connect(connection: Any, _record: Any) -> None:
    """Foreign keys on (cascading deletes), WAL so readers and one writer never block each other;
    transactions begin in `sqlite_begin`, not in the driver (which would begin them too late)."""
    connection.isolation_level = None
    cursor = connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def sqlite_begin(connection: Any) -> None:
    """A write transaction takes the write lock first (waiting for another writer) instead of
    failing when it upgrades a read snapshot that another process has since changed."""
    read_only = connection.get_execution_options().get("coe_read_only", False)
    connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def insert_or_ignore(session: Session, table: type[DeclarativeBase]) -> Any:
    """`INSERT ... ON CONFLICT DO NOTHING` in the session's dialect: a row another writer stored
    first is kept; `rowcount` says whether this one was inserted."""
    return _dialect_insert(session, table).on_conflict_do_nothing().execution_options(preserve_rowcount=True)


def upsert(session: Session, table: type[DeclarativeBase], values: dict[str, Any], *, update: dict[str, Any]) -> Any:
    """`INSERT ... ON CONFLICT (primary key) DO UPDATE`: one statement, so two writers never collide."""
    key = [column.name for column in inspect(table).primary_key]
    return _dialect_insert(session, table).values(**values).on_conflict_do_update(index_elements=key, set_=update)


def count_changed(session: Session, statement: Executable) -> int:
    """Run an insert or update and say how many rows it wrote (0: another writer's row was kept)."""
    return cast(CursorResult[Any], session.execute(statement)).rowcount


def _dialect_insert(session: Session, table: type[DeclarativeBase]) -> Any:
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


def insert_missing(session: Session, table: type[DeclarativeBase], rows: list[dict[str, Any]]) -> None:
    """Insert the rows no other writer stored first, in primary-key order: two writers of
    overlapping rows then lock them in the same order and never deadlock."""
    if rows:
        key = [column.name for column in inspect(table).primary_key]
        session.execute(insert_or_ignore(session, table), sorted(rows, key=lambda row: [row[k] for k in key]))


P = ParamSpec("P")
T = TypeVar("T")


def retried(method: Callable[P, T]) -> Callable[P, T]:
    """A write transaction that lost a race (a lock held past the timeout, a deadlock) runs once more;
    losing twice is a `StoreError`. Only for methods that are one transaction, so a rerun is clean."""

    @functools.wraps(method)
    def once_more(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(*args, **kwargs)
        except OperationalError as error:
            if not _lost_race(error):
                raise
        try:
            return method(*args, **kwargs)
        except OperationalError as error:
            if not _lost_race(error):
                raise
            raise StoreError(
                f"the database stayed locked by another writer, twice ({error.orig}); "
                "try again when the other coe process has finished"
            ) from error

    return once_more


SQLITE_BUSY, SQLITE_LOCKED = 5, 6
LOST_RACE_SQLSTATES = {"40001", "40P01", "55P03"}
"""PostgreSQL: serialization failure, deadlock detected, lock not available (lock_timeout)."""


def _lost_race(error: OperationalError) -> bool:
    sqlite_code = getattr(error.orig, "sqlite_errorcode", None)
    if sqlite_code is not None:
        return sqlite_code & 0xFF in (SQLITE_BUSY, SQLITE_LOCKED)
    return getattr(error.orig, "sqlstate", None) in LOST_RACE_SQLSTATES
