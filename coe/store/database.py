"""The database: a SQLite file by default, any SQLAlchemy URL (PostgreSQL for a team); the registry's
experts and named pools. Profiles and runs have their own modules beside this one."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, delete, event, func, insert, or_, select, update
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from coe.errors import ConfigError, RegistryError, UnknownExpertError
from coe.schema import ExpertSpec
from coe.store.concurrency import count_changed, insert_or_ignore, retried, sqlite_begin, sqlite_connect, upsert
from coe.store.tables import SCHEMA_VERSION, Base, ExpertRow, MetaRow, PoolRow

SCHEMA_LOCK_ID = 0x636F65
"""The PostgreSQL advisory lock that serializes schema creation ("coe")."""


@dataclass(frozen=True, slots=True)
class StoredExpert:
    spec: ExpertSpec
    source: str
    imported_at: datetime


@dataclass(frozen=True, slots=True)
class StoredPool:
    name: str
    experts: tuple[ExpertSpec, ...]
    source: str
    imported_at: datetime


@dataclass(frozen=True, slots=True)
class ImportSummary:
    added: tuple[str, ...]
    updated: tuple[str, ...]
    unchanged: tuple[str, ...]


def now() -> datetime:
    return datetime.now(UTC)


def _spec_json(expert: ExpertSpec) -> str:
    return json.dumps(expert.model_dump(mode="json"), sort_keys=True)


class Store:
    """The coe database. Construction is cheap; tables are created on first use.

    Safe for several processes at once: SQLite runs in WAL mode and every write transaction takes
    the write lock up front (`BEGIN IMMEDIATE`), waiting up to `lock_timeout_s` for another writer;
    PostgreSQL waits as long for row locks. Inserts that another writer may race are
    `INSERT ... ON CONFLICT`, and a write that still loses (timeout, deadlock) runs once more.
    """

    def __init__(self, url: str, *, lock_timeout_s: float = 60.0) -> None:
        self.url = url
        self.lock_timeout_s = lock_timeout_s
        self._engine: Engine | None = None

    @property
    def folder(self) -> Path | None:
        """The folder of a SQLite database file (None for a server or an in-memory database)."""
        parsed = make_url(self.url)
        if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
            return None
        return Path(parsed.database).resolve().parent

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            engine = self._connect()
            try:
                self._create_schema(engine)
            except BaseException as error:
                engine.dispose()
                if not isinstance(error, SQLAlchemyError | ImportError):
                    raise
                cause = getattr(error, "orig", None) or error
                raise ConfigError(
                    f"cannot use the database {engine.url.render_as_string(hide_password=True)}: {cause}; set "
                    "COE_DATABASE_URL to a SQLite file (sqlite:///path/coe.db) or a server "
                    "(postgresql+psycopg://user@host/db)"
                ) from error
            self._engine = engine
        return self._engine

    def _connect(self) -> Engine:
        try:
            parsed = make_url(self.url)
        except Exception as error:
            raise ConfigError(
                f"database URL {self.url!r} is not a SQLAlchemy URL (e.g. sqlite:///coe.db); set COE_DATABASE_URL"
            ) from error
        backend = parsed.get_backend_name()
        if backend not in ("sqlite", "postgresql"):
            raise ConfigError(
                f"cannot use the database {parsed.render_as_string(hide_password=True)}: coe runs on SQLite "
                f"(sqlite:///FILE) or PostgreSQL (postgresql+psycopg://USER@HOST/DB), not {backend!r}; "
                "set COE_DATABASE_URL"
            )
        if backend == "sqlite":
            if parsed.database not in (None, "", ":memory:"):
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(parsed, connect_args={"timeout": self.lock_timeout_s})
            event.listen(engine, "connect", sqlite_connect)
            event.listen(engine, "begin", sqlite_begin)
            return engine
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")  # the driver coe[postgres] installs
        timeout_ms = int(self.lock_timeout_s * 1000)
        try:
            return create_engine(parsed, connect_args={"options": f"-c lock_timeout={timeout_ms}"})
        except ImportError as error:
            raise ConfigError(
                f"database URL {self.url!r} needs a driver that is not installed ({error.name}); "
                "pip install 'coe[postgres]' and write the URL as postgresql+psycopg://..."
            ) from error

    @retried
    def _create_schema(self, engine: Engine) -> None:
        """Tables and version row in one transaction that holds a lock, so concurrent first uses of a
        new database create it once (SQLite: the write lock; PostgreSQL: an advisory lock)."""
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(select(func.pg_advisory_xact_lock(SCHEMA_LOCK_ID)))
            Base.metadata.create_all(connection)
            version = connection.scalar(select(MetaRow.value).where(MetaRow.key == "schema_version"))
            if version is None:
                connection.execute(insert(MetaRow).values(key="schema_version", value=str(SCHEMA_VERSION)))
            elif version != str(SCHEMA_VERSION):
                raise ConfigError(
                    f"database {self.url} has coe schema version {version}, this coe needs {SCHEMA_VERSION}; "
                    "move the file aside (or set COE_DATABASE_URL to a new one) and import the registry again"
                )

    @contextmanager
    def session(self, *, write: bool = True) -> Iterator[Session]:
        """One transaction: committed on success, rolled back (nothing written) on any error.
        `write=False` reads without taking SQLite's write lock, so it never waits for a writer."""
        engine = self.engine if write else self.engine.execution_options(coe_read_only=True)
        with Session(engine) as session, session.begin():
            yield session

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    # ----------------------------------------------------------------------- experts

    @retried
    def import_experts(self, experts: Iterable[ExpertSpec], source: str) -> ImportSummary:
        """Insert or update experts in one transaction; re-importing the same file changes nothing."""
        with self.session() as session:
            return _import_experts(session, experts, source)

    @retried
    def import_pool(self, name: str, experts: Sequence[ExpertSpec], source: str) -> ImportSummary:
        """Store experts and remember them as the pool `name` (replacing a pool of that name), in one
        transaction."""
        with self.session() as session:
            summary = _import_experts(session, experts, source)
            ids = json.dumps([expert.id for expert in experts])
            values = {"expert_ids_json": ids, "source": source, "imported_at": now()}
            session.execute(upsert(session, PoolRow, {"name": name, **values}, update=values))
        return summary

    def list_pools(self) -> list[StoredPool]:
        with self.session(write=False) as session:
            names = session.scalars(select(PoolRow.name).order_by(PoolRow.name)).all()
        return [pool for name in names if (pool := self.get_pool(name)) is not None]

    def get_pool(self, name: str) -> StoredPool | None:
        """The pool imported under `name` with its experts' stored specs; None when there is none."""
        with self.session(write=False) as session:
            row = session.get(PoolRow, name)
            if row is None:
                return None
            expert_rows = {r.id: r for r in session.scalars(select(ExpertRow)).all()}
            missing = [i for i in json.loads(row.expert_ids_json) if i not in expert_rows]
            if missing:
                raise RegistryError(
                    f"pool {name!r} names experts no longer stored ({', '.join(missing)}); import {row.source} again"
                )
            experts = tuple(self._stored(expert_rows[i]).spec for i in json.loads(row.expert_ids_json))
            return StoredPool(name=row.name, experts=experts, source=row.source, imported_at=row.imported_at)

    def list_experts(self) -> list[StoredExpert]:
        with self.session(write=False) as session:
            rows = session.scalars(select(ExpertRow).order_by(ExpertRow.source, ExpertRow.id)).all()
            return [self._stored(row) for row in rows]

    def get_expert(self, expert_id: str) -> StoredExpert:
        with self.session(write=False) as session:
            row = session.get(ExpertRow, expert_id)
            if row is None:
                known = session.scalars(select(ExpertRow.id)).all()
                raise UnknownExpertError(expert_id, known, f"the database {self.url}")
            return self._stored(row)

    @retried
    def remove_expert(self, expert_id: str) -> None:
        self.get_expert(expert_id)
        with self.session() as session:
            dependants = [
                s.spec.id
                for s in map(self._stored, session.scalars(select(ExpertRow)).all())
                if s.spec.is_adapter and s.spec.base == expert_id
            ]
            if dependants:
                raise RegistryError(
                    f"expert {expert_id!r} is the base of adapter(s) {', '.join(dependants)}; remove those first"
                )
            session.execute(delete(ExpertRow).where(ExpertRow.id == expert_id))
            for pool in session.scalars(select(PoolRow)).all():  # the pools that held it go on without it
                ids = json.loads(pool.expert_ids_json)
                if expert_id in ids:
                    pool.expert_ids_json = json.dumps([i for i in ids if i != expert_id])

    @staticmethod
    def _stored(row: ExpertRow) -> StoredExpert:
        try:
            spec = ExpertSpec.model_validate_json(row.spec_json)
        except ValueError as error:
            raise RegistryError(
                f"stored expert {row.id!r} (from {row.source}) no longer validates: {error}; "
                "re-import its registry file"
            ) from error
        return StoredExpert(spec=spec, source=row.source, imported_at=row.imported_at)


def _import_experts(session: Session, experts: Iterable[ExpertSpec], source: str) -> ImportSummary:
    """Each expert is inserted unless present, then updated only if it differs, so concurrent imports
    neither collide nor count one change twice."""
    added: list[str] = []
    updated: list[str] = []
    unchanged: list[str] = []
    for expert in experts:
        values = {"spec_json": _spec_json(expert), "source": source, "imported_at": now()}
        if count_changed(session, insert_or_ignore(session, ExpertRow).values(id=expert.id, **values)):
            added.append(expert.id)
            continue
        differs = or_(ExpertRow.spec_json != values["spec_json"], ExpertRow.source != source)
        changed = count_changed(session, update(ExpertRow).where(ExpertRow.id == expert.id, differs).values(**values))
        (updated if changed else unchanged).append(expert.id)
    return ImportSummary(tuple(added), tuple(updated), tuple(unchanged))
