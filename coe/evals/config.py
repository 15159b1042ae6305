"""What defines an evaluation run; stored with it, so `--resume` continues the same run."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class EvalConfig(BaseModel):
    """Everything that defines a run; stored with it, so `--resume` continues the same run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bench: Literal["mmlu-pro", "gpqa"]
    pool: str
    split: str
    routers: tuple[str, ...] = ("knn", "skill", "classifier", "best-single", "random", "all", "oracle")
    aggregators: tuple[str, ...] = ("majority", "weighted")
    k: int = Field(default=3, ge=1)
    seeds: tuple[int, ...] = (0,)
    limit: int | None = Field(default=None, ge=1)
    max_tokens: int = Field(default=512, ge=1)
    gpqa_subset: Literal["diamond", "main", "extended"] = "diamond"
    aggregator_expert: str | None = None
    """The expert the `llm` aggregator uses; default: the one `coe aggregators probe` stored."""
    aggregator_pool: str | None = None
    """The pool (file or name) holding the aggregator expert, when it is not in the pool."""
    chunk_size: int = Field(default=2000, ge=1)
    kshot: int | None = Field(default=None, ge=1)
    """Fit the `kshot` router on K items per category drawn from the profiling items (default: all of them)."""


def seeded_split(spec: str, seed: int) -> str:
    """`random:N:S` moves with the run's seed (S + seed); other specs are fixed."""
    kind, _, rest = spec.partition(":")
    if kind != "random":
        return spec
    n, _, base = rest.partition(":")
    return f"random:{n}:{int(base or 0) + seed}"
