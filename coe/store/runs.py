"""Stored evaluation runs: every item's route, expert answers and fused answer, so a run resumes
where it stopped and any number traces back to items."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, delete, func, select, update

from coe.errors import RunError
from coe.store.concurrency import count_changed, insert_missing, insert_or_ignore, retried
from coe.store.database import Store, now
from coe.store.tables import RunGenerationRow, RunResultRow, RunRouteRow, RunRow


@dataclass(frozen=True, slots=True)
class RunRecord:
    id: str
    config: dict[str, Any]
    status: str
    created_at: datetime
    updated_at: datetime
    summary: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class ResultRow:
    seed: int
    router: str
    aggregator: str
    item_id: str
    category: str | None
    choice: str | None
    correct: bool
    n_calls: int
    cost_usd: float
    latency_s: float


class RunStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    @retried
    def create(self, run_id: str, config: dict[str, Any]) -> RunRecord:
        with self.store.session() as session:
            values = {"config_json": json.dumps(config, sort_keys=True), "status": "running"}
            created = now()
            inserted = count_changed(
                session,
                insert_or_ignore(session, RunRow).values(id=run_id, created_at=created, updated_at=created, **values),
            )
            if not inserted:
                raise RunError(f"run {run_id!r} already exists; resume it with --resume {run_id}")
            return _record(session.get_one(RunRow, run_id))

    def get(self, run_id: str) -> RunRecord:
        with self.store.session(write=False) as session:
            row = session.get(RunRow, run_id)
            if row is None:
                known = session.scalars(select(RunRow.id).order_by(RunRow.created_at.desc()).limit(10)).all()
                raise RunError(f"no run {run_id!r} in {self.store.url}; recent runs: {', '.join(known) or '(none)'}")
            return _record(row)

    def all(self) -> list[RunRecord]:
        with self.store.session(write=False) as session:
            return [_record(row) for row in session.scalars(select(RunRow).order_by(RunRow.created_at))]

    @retried
    def delete(self, run_id: str) -> None:
        """A run and everything stored under it (its rows cascade); unknown ids are an error."""
        self.get(run_id)
        with self.store.session() as session:
            session.execute(delete(RunRow).where(RunRow.id == run_id))

    @retried
    def finish(self, run_id: str, summary: dict[str, Any]) -> None:
        with self.store.session() as session:
            session.execute(
                update(RunRow)
                .where(RunRow.id == run_id)
                .values(status="done", summary_json=json.dumps(summary), updated_at=now())
            )

    def finished_items(self, run_id: str, seed: int) -> set[str]:
        """Items whose results are stored for this seed (a chunk is stored whole, so any row means all)."""
        with self.store.session(write=False) as session:
            query = select(RunResultRow.item_id).where(RunResultRow.run_id == run_id, RunResultRow.seed == seed)
            return set(session.scalars(query.distinct()))

    def failures(self, run_id: str) -> dict[str, tuple[int, int]]:
        """Per expert: how many generations the run stored, and how many of them failed."""
        failed = func.sum(case((RunGenerationRow.error.is_not(None), 1), else_=0))
        query = (
            select(RunGenerationRow.expert_id, func.count(), failed)
            .where(RunGenerationRow.run_id == run_id)
            .group_by(RunGenerationRow.expert_id)
        )
        with self.store.session(write=False) as session:
            return {expert: (int(total), int(bad or 0)) for expert, total, bad in session.execute(query)}

    def failed_items(self, run_id: str) -> set[str]:
        """Items with at least one failed generation."""
        query = select(RunGenerationRow.item_id).where(
            RunGenerationRow.run_id == run_id, RunGenerationRow.error.is_not(None)
        )
        with self.store.session(write=False) as session:
            return set(session.scalars(query))

    @retried
    def reopen_failed(self, run_id: str) -> int:
        """Forget every item with a failed generation (its generations, routes and results, in every seed),
        so resuming the run asks its experts again; how many items were reopened."""
        items = self.failed_items(run_id)
        with self.store.session() as session:
            for table in (RunGenerationRow, RunRouteRow, RunResultRow):
                for start in range(0, len(items), 500):
                    chunk = sorted(items)[start : start + 500]
                    session.execute(delete(table).where(table.run_id == run_id, table.item_id.in_(chunk)))
            return len(items)

    @retried
    def save_chunk(
        self,
        run_id: str,
        seed: int,
        *,
        generations: Sequence[dict[str, Any]],
        routes: Sequence[dict[str, Any]],
        results: Sequence[dict[str, Any]],
    ) -> None:
        """One transaction per chunk of items: a run killed midway keeps every finished chunk. Rows another
        process stored first (a generation shared by routers, a run resumed twice at once) are kept."""
        with self.store.session() as session:
            insert_missing(session, RunGenerationRow, [{"run_id": run_id, **g} for g in generations])
            insert_missing(session, RunRouteRow, [{"run_id": run_id, "seed": seed, **r} for r in routes])
            insert_missing(session, RunResultRow, [{"run_id": run_id, "seed": seed, **r} for r in results])
            session.execute(update(RunRow).where(RunRow.id == run_id).values(updated_at=now()))

    def results(self, run_id: str) -> list[ResultRow]:
        columns = (
            RunResultRow.seed,
            RunResultRow.router,
            RunResultRow.aggregator,
            RunResultRow.item_id,
            RunResultRow.category,
            RunResultRow.choice,
            RunResultRow.correct,
            RunResultRow.n_calls,
            RunResultRow.cost_usd,
            RunResultRow.latency_s,
        )
        with self.store.session(write=False) as session:
            rows = session.execute(select(*columns).where(RunResultRow.run_id == run_id)).all()
        return [ResultRow(**row._asdict()) for row in rows]

    def routes(self, run_id: str) -> list[tuple[int, str, str, list[tuple[str, float]]]]:
        """(seed, router, item id, [(expert, score), ...]) for every stored route."""
        columns = (RunRouteRow.seed, RunRouteRow.router, RunRouteRow.item_id, RunRouteRow.experts_json)
        with self.store.session(write=False) as session:
            rows = session.execute(select(*columns).where(RunRouteRow.run_id == run_id)).all()
        return [
            (seed, router, item, [tuple(pair) for pair in json.loads(experts)]) for seed, router, item, experts in rows
        ]

    def stored_texts(self, run_id: str) -> list[tuple[str, str, str, int, int, float]]:
        """(expert, item, text, prompt tokens, completion tokens, latency) of every successful generation
        whose text was kept: what a resumed run need not generate again."""
        columns = (
            RunGenerationRow.expert_id,
            RunGenerationRow.item_id,
            RunGenerationRow.text,
            RunGenerationRow.n_prompt_tokens,
            RunGenerationRow.n_completion_tokens,
            RunGenerationRow.latency_s,
        )
        query = select(*columns).where(
            RunGenerationRow.run_id == run_id, RunGenerationRow.text.is_not(None), RunGenerationRow.error.is_(None)
        )
        with self.store.session(write=False) as session:
            return list(session.execute(query))

    def count_generations(self, run_id: str) -> int:
        with self.store.session(write=False) as session:
            query = select(func.count()).select_from(RunGenerationRow).where(RunGenerationRow.run_id == run_id)
            return int(session.scalar(query) or 0)


def _record(row: RunRow) -> RunRecord:
    return RunRecord(
        id=row.id,
        config=json.loads(row.config_json),
        status=row.status,
        created_at=row.created_at,
        updated_at=row.updated_at,
        summary=json.loads(row.summary_json) if row.summary_json else None,
    )


@dataclass(frozen=True, slots=True)
class ItemTrace:
    """Everything a run stored about one test item: each router's route, each expert's answer, each result."""

    routes: list[tuple[int, str, list[tuple[str, float]], str]]
    """(seed, router, [(expert, score)], reason)"""
    generations: list[tuple[str, str | None, str | None, str | None]]
    """(expert, choice, text or None when not kept, error)"""
    results: list[tuple[int, str, str, str | None, bool]]
    """(seed, router, aggregator, choice, correct)"""


def trace_item(store: Store, run_id: str, item_id: str) -> ItemTrace:
    with store.session(write=False) as session:
        routes = session.execute(
            select(RunRouteRow.seed, RunRouteRow.router, RunRouteRow.experts_json, RunRouteRow.reason)
            .where(RunRouteRow.run_id == run_id, RunRouteRow.item_id == item_id)
            .order_by(RunRouteRow.seed, RunRouteRow.router)
        ).all()
        generations = session.execute(
            select(RunGenerationRow.expert_id, RunGenerationRow.choice, RunGenerationRow.text, RunGenerationRow.error)
            .where(RunGenerationRow.run_id == run_id, RunGenerationRow.item_id == item_id)
            .order_by(RunGenerationRow.expert_id)
        ).all()
        results = session.execute(
            select(
                RunResultRow.seed,
                RunResultRow.router,
                RunResultRow.aggregator,
                RunResultRow.choice,
                RunResultRow.correct,
            )
            .where(RunResultRow.run_id == run_id, RunResultRow.item_id == item_id)
            .order_by(RunResultRow.seed, RunResultRow.router, RunResultRow.aggregator)
        ).all()
    return ItemTrace(
        routes=[
            (seed, router, [tuple(p) for p in json.loads(experts)], reason) for seed, router, experts, reason in routes
        ],
        generations=[(expert, choice, text, error) for expert, choice, text, error in generations],
        results=[(seed, router, aggregator, choice, correct) for seed, router, aggregator, choice, correct in results],
    )
