"""What defines an evaluation run; stored with it, so `--resume` continues the same run."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from coe.aggregate import AGGREGATORS
from coe.embed import DEFAULT_ENCODER, EncoderName
from coe.policy import KPolicy
from coe.routers import ROUTERS
from coe.splits import check_split_spec


class EvalConfig(BaseModel):
    """Everything that defines a run; stored with it, so `--resume` continues the same run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bench: Literal["mmlu-pro", "gpqa"]
    pool: str
    split: str
    routers: tuple[str, ...] = ("knn", "skill", "classifier", "best-single", "random", "all", "oracle")
    aggregators: tuple[str, ...] = ("majority", "weighted")
    k: int = Field(default=3, ge=1)
    k_policy: str = "fixed"
    """How many of the k each query asks (`fixed`, `auto`, `cascade[:START]`, `calls:B`, `gain:B`, `topp:P`;
    `coe.policy.KPolicy`)."""
    seeds: tuple[int, ...] = (0,)
    limit: int | None = Field(default=None, ge=1)
    max_tokens: int = Field(default=512, ge=1)
    max_cost_usd: float | None = Field(default=None, gt=0)
    """The most one query may cost (`coe.compose.CompositionSpec.max_cost_usd`); None: no cap."""
    gpqa_subset: Literal["diamond", "main", "extended"] = "diamond"
    aggregator_expert: str | None = None
    """The expert the `llm` aggregator uses; default: the one `coe aggregators probe` stored."""
    aggregator_pool: str | None = None
    """The pool (file or name) holding the aggregator expert, when it is not in the pool."""
    chunk_size: int = Field(default=2000, ge=1)
    fallback: bool = False
    """Replace a picked expert that fails by the router's next-ranked one, as the service does. Off by
    default: a recorded expert missing an item then abstains, and each router is measured on its picks."""
    kshot: int | None = Field(default=None, ge=1)
    """Fit the `kshot` router on K items per category drawn from the profiling items (default: all of them)."""
    max_failure_rate: float = Field(default=0.1, ge=0, le=1)
    """A run whose share of failed generations passes this says so loudly and exits non-zero."""
    pool_fingerprint: str = ""
    """The hash of the pool's expert specs when the run started: a resumed run must use the same experts."""
    encoder: EncoderName = DEFAULT_ENCODER
    """The query encoder of knn, skill and classifier and of the skill annotation."""

    @field_validator("split")
    @classmethod
    def _split_form(cls, value: str) -> str:
        return check_split_spec(value)

    @field_validator("routers", "aggregators")
    @classmethod
    def _known_names(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        known = ROUTERS if info.field_name == "routers" else AGGREGATORS
        if not value or not all(value):
            raise ValueError(f"name at least one; known: {', '.join(sorted(known))}")
        unknown = [name for name in value if name not in known]
        if unknown:
            raise ValueError(f"unknown {unknown[0]!r}; known: {', '.join(sorted(known))}")
        if len(set(value)) != len(value):
            raise ValueError("a name appears twice")
        return value

    @field_validator("k_policy")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        return str(KPolicy.parse(value))

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or len(set(value)) != len(value):
            raise ValueError("give one or more distinct seeds, e.g. 0,1,2")
        return value


ADDED_FIELDS = {"encoder": "minilm", "fallback": False, "k_policy": "fixed", "max_cost_usd": None}
"""Settings added after runs were stored, with the value those runs used, so they still resume."""


def seeded_split(spec: str, seed: int) -> str:
    """`random:N:S` moves with the run's seed (S + seed); other specs are fixed."""
    kind, _, rest = check_split_spec(spec).partition(":")
    if kind != "random":
        return spec
    n, _, base = rest.partition(":")
    return f"random:{n}:{int(base or 0) + seed}"
