"""The database tables: experts and named pools (the registry), profiles (measured outcomes), evaluation runs."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SCHEMA_VERSION = 2
"""Bumped whenever a table changes; a database of another version is refused with a clear message."""


class Base(DeclarativeBase):
    pass


class ModelText(TypeDecorator[str]):
    """Text from models and providers (answers, errors): a NUL character, which PostgreSQL cannot store,
    becomes U+FFFD on every database, so one answer never fails a whole chunk and both store the same."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return value.replace("\x00", "\ufffd") if value else value


class MetaRow(Base):
    __tablename__ = "coe_meta"

    key: Mapped[str] = mapped_column(String(40), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class ExpertRow(Base):
    __tablename__ = "experts"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    spec_json: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(Text)
    imported_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class PoolRow(Base):
    """A named pool: the experts of one imported registry file, in file order."""

    __tablename__ = "pools"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    expert_ids_json: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(Text)
    imported_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ProfileRow(Base):
    """One profiling of a pool on a benchmark split; `key` identifies equal inputs for reuse."""

    __tablename__ = "profiles"
    __table_args__ = (UniqueConstraint("key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(64))
    bench: Mapped[str] = mapped_column(String(40))
    split: Mapped[str] = mapped_column(Text)
    pool: Mapped[str] = mapped_column(Text)
    experts_json: Mapped[str] = mapped_column(Text)
    """Each expert's id and the hash of its full spec: the model identity the outcomes belong to."""
    params_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    complete: Mapped[bool] = mapped_column(Boolean, default=False)
    """False while items are still being profiled (an interrupted profiling resumes)."""


class ProfileItemRow(Base):
    __tablename__ = "profile_items"

    profile_id: Mapped[int] = mapped_column(ForeignKey("profiles.id", ondelete="CASCADE"), primary_key=True)
    item_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    category: Mapped[str | None] = mapped_column(String(80), nullable=True)
    skills_json: Mapped[str] = mapped_column(Text)


class ProfileOutcomeRow(Base):
    __tablename__ = "profile_outcomes"

    profile_id: Mapped[int] = mapped_column(ForeignKey("profiles.id", ondelete="CASCADE"), primary_key=True)
    item_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    expert_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    choice: Mapped[str | None] = mapped_column(String(1), nullable=True)
    correct: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    """None when the expert gave no answer because it failed (an error), not because it was wrong."""
    text: Mapped[str | None] = mapped_column(ModelText, nullable=True)
    """Left out for recorded (replay) experts and for benchmarks whose text must not be stored (GPQA)."""
    n_tokens: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(ModelText, nullable=True)


class RunRow(Base):
    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    config_json: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    summary_json: Mapped[str | None] = mapped_column(Text, nullable=True)


class RunGenerationRow(Base):
    """An expert's answer to a test item within a run (shared by every router that chose it)."""

    __tablename__ = "run_generations"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    expert_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    item_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    choice: Mapped[str | None] = mapped_column(String(1), nullable=True)
    text: Mapped[str | None] = mapped_column(ModelText, nullable=True)
    n_prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    n_completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    latency_s: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(ModelText, nullable=True)


class RunRouteRow(Base):
    """A router's choice for a test item in one seed of a run."""

    __tablename__ = "run_routes"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    seed: Mapped[int] = mapped_column(Integer, primary_key=True)
    router: Mapped[str] = mapped_column(String(40), primary_key=True)
    item_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    experts_json: Mapped[str] = mapped_column(Text)
    """[[expert id, score], ...] in the router's order."""
    reason: Mapped[str] = mapped_column(ModelText)


class RunResultRow(Base):
    """The fused answer of one (router, aggregator) on a test item in one seed."""

    __tablename__ = "run_results"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    seed: Mapped[int] = mapped_column(Integer, primary_key=True)
    router: Mapped[str] = mapped_column(String(40), primary_key=True)
    aggregator: Mapped[str] = mapped_column(String(40), primary_key=True)
    item_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    category: Mapped[str | None] = mapped_column(String(80), nullable=True)
    choice: Mapped[str | None] = mapped_column(String(1), nullable=True)
    correct: Mapped[bool] = mapped_column(Boolean)
    n_calls: Mapped[int] = mapped_column(Integer)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    latency_s: Mapped[float] = mapped_column(Float, default=0.0)


class AggregatorChoiceRow(Base):
    """The aggregator expert a probe chose for a pool and benchmark, with every candidate's score."""

    __tablename__ = "aggregator_choices"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    pool: Mapped[str] = mapped_column(Text)
    bench: Mapped[str] = mapped_column(String(40))
    expert_id: Mapped[str] = mapped_column(String(200))
    scores_json: Mapped[str] = mapped_column(Text)
    """candidate id -> share of probe items where its synthesis recovered the correct answer."""
    n_items: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ServedRequestRow(Base):
    """One request the service answered (or refused): for the UI's traffic page and for audits. The
    prompt is kept only when the service runs with `--log-prompts`; API keys never appear, only their name."""

    __tablename__ = "served_requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    key_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    model: Mapped[str] = mapped_column(String(200))
    router: Mapped[str | None] = mapped_column(String(40), nullable=True)
    aggregator: Mapped[str | None] = mapped_column(String(40), nullable=True)
    experts_json: Mapped[str] = mapped_column(Text, default="[]")
    """The experts that answered, in route order."""
    fallbacks_json: Mapped[str] = mapped_column(Text, default="[]")
    """[[failed expert, replacement], ...]"""
    status: Mapped[int] = mapped_column(Integer)
    """The HTTP status returned."""
    error_kind: Mapped[str | None] = mapped_column(String(40), nullable=True)
    latency_s: Mapped[float] = mapped_column(Float, default=0.0)
    n_prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    n_completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    prompt: Mapped[str | None] = mapped_column(ModelText, nullable=True)


class ApiKeyRow(Base):
    """A key of the service: only its SHA-256 is stored (the key itself is shown once, at creation)."""

    __tablename__ = "api_keys"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    prefix: Mapped[str] = mapped_column(String(16))
    """The key's first characters, to recognise it in `coe keys list` (not enough to use it)."""
    rate_limit_per_min: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
