"""One side-by-side comparison: several routers and aggregators on one question, each router fitted
through the composition builder and all of them run by `Composer.compare`, so every (expert,
question) pair is generated once however many columns show it."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

from coe.compose import (
    AggregatorSpec,
    CompositionSpec,
    GenerationSpec,
    KShotProfile,
    ProfileSource,
    RouterSpec,
    SplitProfile,
)
from coe.composer import BatchResult
from coe.profile import find_profile
from coe.registry import Registry
from coe.schema import Answer, Query, Route
from ui.jobs import Job
from ui.workbench import Workbench


@dataclass(frozen=True)
class ComparisonRequest:
    pool: str
    query: Query
    routers: tuple[str, ...]
    aggregators: tuple[str, ...]
    k: int
    profile: ProfileSource
    max_tokens: int = 384
    seed: int = 0

    def spec(self, router: str) -> CompositionSpec:
        """The composition of one column (its aggregator is chosen per result, see `run_comparison`)."""
        return CompositionSpec(
            pool=self.pool,
            router=RouterSpec(name=router),
            profile=self.profile,
            k=self.k,
            seed=self.seed,
            generation=GenerationSpec(max_tokens=self.max_tokens, seed=self.seed),
        )


@dataclass(frozen=True)
class Comparison:
    request: ComparisonRequest
    registry: Registry
    results: dict[tuple[str, str], BatchResult]
    wall_s: float

    def answer(self, router: str, aggregator: str) -> Answer:
        return self.results[router, aggregator].answers[0]

    def route(self, router: str) -> Route:
        return self.results[router, self.request.aggregators[0]].routes[0]

    @property
    def n_generated(self) -> int:
        """Expert answers generated for the whole comparison (each expert once)."""
        return next(iter(self.results.values())).stats.n_requests


def typed_query(text: str, choices: Sequence[str] = (), gold: str | None = None) -> Query:
    """A typed question; its id is a digest of its content, so a recorded expert never mistakes it
    for a benchmark item."""
    digest = hashlib.sha256("\n".join([text, *choices]).encode()).hexdigest()[:12]
    return Query(id=f"typed-{digest}", text=text, choices=tuple(choices) or None, gold=gold)


def run_comparison(bench: Workbench, request: ComparisonRequest, job: Job[Comparison]) -> Comparison:
    """Fit (or take from the cache) one composition per router, then run them all on the question."""
    job.description = "waiting for another comparison to finish"
    while not bench.lock.acquire(timeout=0.2):
        job.check()
    started = time.perf_counter()
    builder = bench.builder
    earlier = builder.progress
    builder.progress = job.phase  # profiling progress (and its cancel points) come to this job
    try:
        registry = builder.pool(request.pool)
        routers = {}
        for name in request.routers:
            with job.phase(f"fitting {name} (the first time can take minutes: profile, embeddings)", 1) as tick:
                routers[name] = bench.composer(request.spec(name)).router
                tick(1)
        profile_bench = _profile_bench(bench, request.profile)
        aggregators = {
            name: builder.aggregator(AggregatorSpec.model_validate({"name": name}), registry, profile_bench)
            for name in request.aggregators
        }
        experts = {e for router in routers.values() for e in router.route([request.query])[0].expert_ids}
        composer = bench.composer(request.spec(request.routers[0]))
        with job.phase(f"asking {len(experts)} experts (each once)", len(experts)) as tick:
            results = composer.compare([request.query], routers, aggregators, tick)
    finally:
        builder.progress = earlier
        bench.lock.release()
    return Comparison(request, registry, results, time.perf_counter() - started)


def _profile_bench(bench: Workbench, source: ProfileSource) -> str | None:
    """The benchmark a profile source measured (the llm aggregator's stored expert is per benchmark)."""
    if source == "priors":
        return None
    if isinstance(source, SplitProfile | KShotProfile):
        return source.bench
    return find_profile(bench.store, source.stored).bench
