"""The service's request log: what was served, by whom (key name), through which experts, how fast."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import insert, select

from coe.store.concurrency import retried
from coe.store.database import Store, now
from coe.store.tables import Base, ServedRequestRow


@dataclass(frozen=True, slots=True)
class ServedRequest:
    model: str
    status: int
    router: str | None = None
    aggregator: str | None = None
    experts: tuple[str, ...] = ()
    fallbacks: tuple[tuple[str, str], ...] = ()
    """(failed expert, the expert that replaced it)"""
    error_kind: str | None = None
    latency_s: float = 0.0
    n_prompt_tokens: int = 0
    n_completion_tokens: int = 0
    cost_usd: float = 0.0
    key_name: str | None = None
    prompt: str | None = None
    created_at: datetime = field(default_factory=now)


class RequestLog:
    def __init__(self, store: Store) -> None:
        self.store = store

    @retried
    def add(self, requests: Sequence[ServedRequest]) -> None:
        """Record a batch of served requests in one transaction."""
        if not requests:
            return
        rows = [
            {
                "created_at": r.created_at,
                "key_name": r.key_name,
                "model": r.model,
                "router": r.router,
                "aggregator": r.aggregator,
                "experts_json": json.dumps(list(r.experts)),
                "fallbacks_json": json.dumps([list(pair) for pair in r.fallbacks]),
                "status": r.status,
                "error_kind": r.error_kind,
                "latency_s": r.latency_s,
                "n_prompt_tokens": r.n_prompt_tokens,
                "n_completion_tokens": r.n_completion_tokens,
                "cost_usd": r.cost_usd,
                "prompt": r.prompt,
            }
            for r in requests
        ]
        with self.store.session() as session:  # a Core executemany: the ORM's bulk path costs more per row
            session.execute(insert(Base.metadata.tables[ServedRequestRow.__tablename__]), rows)

    def since(self, start: datetime | None = None, limit: int = 10_000) -> list[ServedRequest]:
        """Logged requests from `start` on (all when None), oldest first, at most `limit` (the newest)."""
        query = select(ServedRequestRow).order_by(ServedRequestRow.created_at.desc()).limit(limit)
        if start is not None:
            query = query.where(ServedRequestRow.created_at >= start)
        with self.store.session(write=False) as session:
            rows = session.scalars(query).all()
            return [_served(row) for row in reversed(rows)]


def _served(row: ServedRequestRow) -> ServedRequest:
    return ServedRequest(
        model=row.model,
        status=row.status,
        router=row.router,
        aggregator=row.aggregator,
        experts=tuple(json.loads(row.experts_json)),
        fallbacks=tuple((a, b) for a, b in json.loads(row.fallbacks_json)),
        error_kind=row.error_kind,
        latency_s=row.latency_s,
        n_prompt_tokens=row.n_prompt_tokens,
        n_completion_tokens=row.n_completion_tokens,
        cost_usd=row.cost_usd,
        key_name=row.key_name,
        prompt=row.prompt,
        created_at=row.created_at,
    )
