"""The database: a SQLite file by default, any SQLAlchemy URL (PostgreSQL for a team); the registry's
experts and named pools. Profiles and runs have their own modules beside this one."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, delete, event, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from coe.errors import ConfigError, RegistryError, UnknownExpertError
from coe.schema import ExpertSpec
from coe.store.tables import SCHEMA_VERSION, Base, ExpertRow, MetaRow, PoolRow


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
    """The coe database. Construction is cheap; tables are created on first use."""

    def __init__(self, url: str) -> None:
        self.url = url
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
            try:
                parsed = make_url(self.url)
            except Exception as error:
                raise ConfigError(
                    f"database URL {self.url!r} is not a SQLAlchemy URL (e.g. sqlite:///coe.db); set COE_DATABASE_URL"
                ) from error
            if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            try:
                engine = create_engine(parsed)
                if parsed.get_backend_name() == "sqlite":
                    event.listen(engine, "connect", _sqlite_pragmas)
                Base.metadata.create_all(engine)
                self._check_schema(engine)
            except (SQLAlchemyError, ImportError) as error:
                cause = getattr(error, "orig", None) or error
                raise ConfigError(
                    f"cannot use the database {parsed.render_as_string(hide_password=True)}: {cause}; set "
                    "COE_DATABASE_URL to a SQLite file (sqlite:///path/coe.db) or a server "
                    "(postgresql+psycopg://user@host/db)"
                ) from error
            self._engine = engine
        return self._engine

    def _check_schema(self, engine: Engine) -> None:
        with Session(engine) as session, session.begin():
            row = session.get(MetaRow, "schema_version")
            if row is None:
                session.add(MetaRow(key="schema_version", value=str(SCHEMA_VERSION)))
            elif row.value != str(SCHEMA_VERSION):
                raise ConfigError(
                    f"database {self.url} has coe schema version {row.value}, this coe needs {SCHEMA_VERSION}; "
                    "move the file aside (or set COE_DATABASE_URL to a new one) and import the registry again"
                )

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed on success, rolled back (nothing written) on any error."""
        with Session(self.engine) as session, session.begin():
            yield session

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    # ----------------------------------------------------------------------- experts

    def import_experts(self, experts: Iterable[ExpertSpec], source: str) -> ImportSummary:
        """Insert or update experts in one transaction; re-importing the same file changes nothing."""
        added, updated, unchanged = [], [], []
        with self.session() as session:
            for expert in experts:
                spec_json = _spec_json(expert)
                row = session.get(ExpertRow, expert.id)
                if row is None:
                    session.add(ExpertRow(id=expert.id, spec_json=spec_json, source=source, imported_at=now()))
                    added.append(expert.id)
                elif row.spec_json != spec_json or row.source != source:
                    row.spec_json, row.source, row.imported_at = spec_json, source, now()
                    updated.append(expert.id)
                else:
                    unchanged.append(expert.id)
        return ImportSummary(tuple(added), tuple(updated), tuple(unchanged))

    def import_pool(self, name: str, experts: Sequence[ExpertSpec], source: str) -> ImportSummary:
        """Store experts and remember them as the pool `name` (replacing a pool of that name)."""
        summary = self.import_experts(experts, source)
        with self.session() as session:
            row = session.get(PoolRow, name)
            ids = json.dumps([expert.id for expert in experts])
            if row is None:
                session.add(PoolRow(name=name, expert_ids_json=ids, source=source, imported_at=now()))
            else:
                row.expert_ids_json, row.source, row.imported_at = ids, source, now()
        return summary

    def list_pools(self) -> list[StoredPool]:
        with self.session() as session:
            names = session.scalars(select(PoolRow.name).order_by(PoolRow.name)).all()
        return [pool for name in names if (pool := self.get_pool(name)) is not None]

    def get_pool(self, name: str) -> StoredPool | None:
        """The pool imported under `name` with its experts' stored specs; None when there is none."""
        with self.session() as session:
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
        with self.session() as session:
            rows = session.scalars(select(ExpertRow).order_by(ExpertRow.source, ExpertRow.id)).all()
            return [self._stored(row) for row in rows]

    def get_expert(self, expert_id: str) -> StoredExpert:
        with self.session() as session:
            row = session.get(ExpertRow, expert_id)
            if row is None:
                known = session.scalars(select(ExpertRow.id)).all()
                raise UnknownExpertError(expert_id, known, f"the database {self.url}")
            return self._stored(row)

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


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    """Foreign keys on (cascading deletes), WAL so a reader never blocks a running evaluation."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()
