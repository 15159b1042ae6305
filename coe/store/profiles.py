"""Stored profiles: which expert got which profiling item right, with the model identity and date;
and the aggregator expert a probe chose from them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, null, select

from coe.store.concurrency import insert_missing, insert_or_ignore, retried
from coe.store.database import Store, now
from coe.store.tables import AggregatorChoiceRow, ProfileItemRow, ProfileOutcomeRow, ProfileRow


@dataclass(frozen=True, slots=True)
class ProfileRecord:
    id: int
    key: str
    bench: str
    split: str
    pool: str
    experts: dict[str, str]
    """expert id -> hash of its spec."""
    params: dict[str, Any]
    created_at: datetime
    complete: bool


@dataclass(frozen=True, slots=True)
class ProfileItem:
    item_id: str
    category: str | None
    skills: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ProfileOutcome:
    item_id: str
    expert_id: str
    choice: str | None
    correct: bool | None
    text: str | None = None
    n_tokens: int = 0
    error: str | None = None


class ProfileStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    @retried
    def open(
        self, *, key: str, bench: str, split: str, pool: str, experts: dict[str, str], params: dict[str, Any]
    ) -> ProfileRecord:
        """The profile with this key, or a new empty one: items are added chunk by chunk, so an
        interrupted profiling continues where it stopped. Processes opening one key share one profile."""
        with self.store.session() as session:
            session.execute(
                insert_or_ignore(session, ProfileRow).values(
                    key=key,
                    bench=bench,
                    split=split,
                    pool=pool,
                    experts_json=json.dumps(experts, sort_keys=True),
                    params_json=json.dumps(params, sort_keys=True),
                    created_at=now(),
                    complete=False,
                )
            )
            return _record(session.scalars(select(ProfileRow).where(ProfileRow.key == key)).one())

    @retried
    def add(self, profile_id: int, items: Sequence[ProfileItem], outcomes: Sequence[ProfileOutcome]) -> None:
        """Store a chunk of profiled items and their outcomes in one transaction; items another
        process stored first are kept as they are."""
        with self.store.session() as session:
            start = session.scalar(select(func.count()).where(ProfileItemRow.profile_id == profile_id)) or 0
            item_rows = [
                {
                    "profile_id": profile_id,
                    "item_id": item.item_id,
                    "position": start + offset,
                    "category": item.category,
                    "skills_json": json.dumps(list(item.skills)),
                }
                for offset, item in enumerate(items)
            ]
            insert_missing(session, ProfileItemRow, item_rows)
            outcome_rows = [
                {
                    "profile_id": profile_id,
                    "item_id": o.item_id,
                    "expert_id": o.expert_id,
                    "choice": o.choice,
                    "correct": o.correct,
                    "text": o.text,
                    "n_tokens": o.n_tokens,
                    "error": o.error,
                }
                for o in outcomes
            ]
            insert_missing(session, ProfileOutcomeRow, outcome_rows)

    @retried
    def finish(self, profile_id: int) -> ProfileRecord:
        with self.store.session() as session:
            row = session.get(ProfileRow, profile_id)
            assert row is not None
            row.complete = True
            return _record(row)

    @retried
    def remove(self, key: str) -> None:
        with self.store.session() as session:
            session.execute(delete(ProfileRow).where(ProfileRow.key == key))

    def find(self, key: str) -> ProfileRecord | None:
        with self.store.session(write=False) as session:
            row = session.scalars(select(ProfileRow).where(ProfileRow.key == key)).one_or_none()
            return _record(row) if row else None

    def all(self) -> list[ProfileRecord]:
        with self.store.session(write=False) as session:
            return [_record(row) for row in session.scalars(select(ProfileRow).order_by(ProfileRow.created_at))]

    def items(self, profile_id: int) -> list[ProfileItem]:
        with self.store.session(write=False) as session:
            rows = session.execute(
                select(ProfileItemRow.item_id, ProfileItemRow.category, ProfileItemRow.skills_json)
                .where(ProfileItemRow.profile_id == profile_id)
                .order_by(ProfileItemRow.position)
            ).all()
        return [ProfileItem(item_id, category, tuple(json.loads(skills))) for item_id, category, skills in rows]

    def outcomes(self, profile_id: int, *, with_text: bool = False) -> list[ProfileOutcome]:
        columns = [
            ProfileOutcomeRow.item_id,
            ProfileOutcomeRow.expert_id,
            ProfileOutcomeRow.choice,
            ProfileOutcomeRow.correct,
            ProfileOutcomeRow.text if with_text else null().label("text"),
            ProfileOutcomeRow.n_tokens,
            ProfileOutcomeRow.error,
        ]
        with self.store.session(write=False) as session:
            rows = session.execute(select(*columns).where(ProfileOutcomeRow.profile_id == profile_id)).all()
        return [
            ProfileOutcome(
                item_id=row.item_id,
                expert_id=row.expert_id,
                choice=row.choice,
                correct=row.correct,
                text=row.text,
                n_tokens=row.n_tokens,
                error=row.error,
            )
            for row in rows
        ]


def _record(row: ProfileRow) -> ProfileRecord:
    return ProfileRecord(
        id=row.id,
        key=row.key,
        bench=row.bench,
        split=row.split,
        pool=row.pool,
        experts=json.loads(row.experts_json),
        params=json.loads(row.params_json),
        created_at=row.created_at,
        complete=row.complete,
    )


@dataclass(frozen=True, slots=True)
class AggregatorChoice:
    pool: str
    bench: str
    expert_id: str
    scores: dict[str, float]
    n_items: int
    created_at: datetime


@retried
def save_aggregator_choice(
    store: Store, *, pool: str, bench: str, expert_id: str, scores: dict[str, float], n_items: int
) -> AggregatorChoice:
    choice = AggregatorChoice(pool, bench, expert_id, scores, n_items, now())
    with store.session() as session:
        session.add(
            AggregatorChoiceRow(
                pool=pool,
                bench=bench,
                expert_id=expert_id,
                scores_json=json.dumps(scores),
                n_items=n_items,
                created_at=choice.created_at,
            )
        )
    return choice


def latest_aggregator_choice(store: Store, *, pool: str, bench: str) -> AggregatorChoice | None:
    with store.session(write=False) as session:
        row = session.scalars(
            select(AggregatorChoiceRow)
            .where(AggregatorChoiceRow.pool == pool, AggregatorChoiceRow.bench == bench)
            .order_by(AggregatorChoiceRow.created_at.desc(), AggregatorChoiceRow.id.desc())
            .limit(1)
        ).one_or_none()
        if row is None:
            return None
        return AggregatorChoice(
            row.pool, row.bench, row.expert_id, json.loads(row.scores_json), row.n_items, row.created_at
        )
