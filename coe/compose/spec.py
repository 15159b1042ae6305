"""What a composition is, declared: `CompositionSpec` (pool, router, profile source, aggregator, k,
generation, executor) and its parts, loadable from a composition file. Building it is `builder.py`'s job."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from coe.datasets import BENCHMARKS
from coe.embed import DEFAULT_ENCODER, EncoderName
from coe.errors import ConfigError
from coe.executors.base import ExecutorKind
from coe.policy import KPolicy
from coe.recovery import Recovery
from coe.registry import describe_validation_error
from coe.resources import bundled_compositions
from coe.schema import Frozen
from coe.types import GenerationParams

Bench = Literal["mmlu-pro", "gpqa"]


class RouterSpec(Frozen):
    """A router by name (see `coe.routers.ROUTERS`) with hyperparameters for its constructor."""

    name: str = "all"
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _k_and_seed_belong_to_the_composition(self) -> RouterSpec:
        owned = sorted({"k", "random_state"} & set(self.params))
        if owned:
            raise ValueError(f"set {' and '.join(owned)} on the composition (`k:`, `seed:`), not in router params")
        return self


class AggregatorSpec(Frozen):
    name: Literal["majority", "weighted", "stacked", "llm"] = "majority"
    expert: str | None = None
    """The `llm` aggregator's expert; default: the one `coe aggregators probe` stored for the pool."""
    pool: str | None = None
    """Where that expert is registered, when not in the composition's pool."""


class SplitProfile(Frozen):
    """Profile the pool now on a benchmark split's profiling items (a stored equal profile is reused)."""

    bench: Bench
    split: str = "random:1400:0"
    gpqa_subset: Literal["diamond", "main", "extended"] = "diamond"


class StoredProfile(Frozen):
    """A profile already stored, by id or by name (`coe profiles list`)."""

    stored: int | str


class KShotProfile(Frozen):
    """K labelled examples of the user's task, every expert run on them now (nothing is stored, so a
    pool never profiled works): the questions of an `examples` file (JSON Lines, see
    `coe.datasets.load_examples`), or `kshot` items drawn (seeded) from the profiling items of a
    benchmark split, of one `category` or K of each. Fit the `kshot` router on them."""

    examples: str | None = None
    kshot: int | None = Field(default=None, ge=1)
    bench: Bench | None = None
    split: str = "random:1400:0"
    gpqa_subset: Literal["diamond", "main", "extended"] = "diamond"
    category: str | None = None
    seed: int = 0

    @model_validator(mode="after")
    def _one_source(self) -> KShotProfile:
        if (self.examples is None) == (self.kshot is None):
            raise ValueError("give either `examples` (a file) or `kshot` (K items drawn from `bench`'s split)")
        if self.kshot is not None and self.bench is None:
            raise ValueError("`kshot` draws from a benchmark split: give `bench` (and `split`, `category`)")
        return self


ProfileSource = Literal["priors"] | StoredProfile | SplitProfile | KShotProfile


class GenerationSpec(Frozen):
    max_tokens: int = Field(default=384, ge=1)
    temperature: float = Field(default=0.0, ge=0)
    seed: int = 0

    def params(self) -> GenerationParams:
        return GenerationParams(max_tokens=self.max_tokens, temperature=self.temperature, seed=self.seed)


class CompositionSpec(Frozen):
    """Everything that defines a composition; `compositions/*.yaml` files hold one each."""

    pool: str
    """A registry file, the name of a pool imported into the database, or a bundled pool's name."""
    router: RouterSpec = RouterSpec()
    profile: ProfileSource = "priors"
    aggregator: AggregatorSpec = AggregatorSpec()
    k: int = Field(default=3, ge=1)
    """Experts per query, for the routers that pick k (the router is fitted for this k); with a
    `k_policy` other than `fixed`, the most a query asks."""
    k_policy: str = "fixed"
    """How many of the k each query asks: `fixed` (all), `auto` or `cascade[:START]` (ask START, default
    2, then one more while the vote could still change), `calls:B` or `gain:B` (ask one, then more
    within B calls per query on average), `agree` (ask two, then one more until one letter holds two
    thirds of the answers), `topp:P` (the fewest whose scores reach P of the route's);
    see `coe.policy.KPolicy`."""
    seed: int = 0
    """The router's random state (random draws, cross-validation folds)."""
    max_cost_usd: float | None = Field(default=None, gt=0)
    """The most one query may cost (USD), estimated before it is asked: the prompt at four characters a
    token plus `generation.max_tokens`, at each expert's `cost_per_mtok`. Experts that cannot fit are not
    asked and a route over the cap keeps its best-ranked experts that fit (`coe.costs.within_cost`)."""
    generation: GenerationSpec = GenerationSpec()
    recovery: Recovery = Recovery()
    """Failed generations: the route's next-ranked expert replaces them (backends retry, the Composer does not)."""
    executor: ExecutorKind = "local"
    """Where the scheduler runs the experts: `local` (this process) or `ray` (one Ray actor per model;
    the cluster is `Settings.ray_address`, COE_RAY_ADDRESS, or a private local one)."""
    encoder: EncoderName = DEFAULT_ENCODER
    """The query encoder of the knn, skill and classifier routers and of skill annotation."""

    @field_validator("k_policy")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        return str(KPolicy.parse(value))

    @model_validator(mode="before")
    @classmethod
    def _names_as_shorthand(cls, data: Any) -> Any:
        """`router: knn` and `aggregator: weighted` stand for `{name: ...}`."""
        if isinstance(data, dict):
            data = dict(data)
            for key in ("router", "aggregator"):
                if isinstance(data.get(key), str):
                    data[key] = {"name": data[key]}
        return data

    @classmethod
    def load(cls, ref: Path | str) -> CompositionSpec:
        """A composition file, or a bundled composition's name (`knn`, `embedded`, ...)."""
        bundled = bundled_compositions()
        if not Path(ref).is_file() and str(ref) in bundled:
            return cls.from_file(bundled[str(ref)])
        if not Path(ref).is_file():
            raise ConfigError(f"no composition {str(ref)!r}: not a file, not a bundled one ({', '.join(bundled)})")
        return cls.from_file(ref)

    @classmethod
    def from_file(cls, path: Path | str) -> CompositionSpec:
        """A composition file; errors name the file and the field."""
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            raise ConfigError(f"cannot read composition {path}: {error}") from error
        try:
            spec = cls.model_validate(raw)
        except ValidationError as error:
            raise ConfigError(describe_validation_error(path, error, raw, cls)) from error
        profile = spec.profile
        if isinstance(profile, KShotProfile):
            profile = profile.model_copy(update={"examples": _beside(path, profile.examples)})
        return spec.model_copy(
            update={
                "pool": _beside(path, spec.pool),
                "aggregator": spec.aggregator.model_copy(update={"pool": _beside(path, spec.aggregator.pool)}),
                "profile": profile,
            }
        )


def _beside(spec_file: Path, ref: str | None) -> str | None:
    """A relative registry or examples path in a composition file is relative to that file (names stay names)."""
    if ref is None or Path(ref).is_absolute() or not (spec_file.parent / ref).is_file():
        return ref
    return str((spec_file.parent / ref).resolve())


def parse_profile_source(text: str) -> ProfileSource:
    """A profile source as typed on a command line: `priors`, a stored profile's id or name,
    `BENCH:SPLIT` (e.g. `mmlu-pro:random:1400:0`) to profile now, or `kshot:FILE` to run every expert
    on a K-shot examples file."""
    bench, _, split = text.partition(":")
    if text == "priors":
        return "priors"
    if bench == "kshot" and split:
        return KShotProfile(examples=split)
    if bench in BENCHMARKS and split:
        return SplitProfile(bench=bench, split=split)
    return StoredProfile(stored=int(text) if text.isdigit() else text)
