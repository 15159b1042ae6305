"""`coe eval`: routers × aggregators on a benchmark, against honest baselines, over several seeds.

For each seed: split the benchmark, profile the pool on the profiling items (or reuse the stored
profile), fit the routers, then route the test items in chunks, run the union of the routers' picks
once (expert-batched), fuse with every aggregator and store each chunk in one transaction, so a run
killed midway resumes where it stopped and never recomputes a finished item.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from coe.aggregate import Aggregator, make_aggregator
from coe.backends import Backend
from coe.composer import BatchResult, Composer
from coe.errors import RunError
from coe.evals.datasets import load_benchmark
from coe.evals.splits import make_split, stratified_sample
from coe.evals.summary import EvalSummary, summarize
from coe.outcomes import Outcomes
from coe.profile import measure, profile
from coe.registry import Registry
from coe.routers import make_router
from coe.routers.base import Router
from coe.scheduler import MemoryCache, Scheduler
from coe.schema import Query
from coe.store import RunStore, Store, latest_aggregator_choice
from coe.types import Generation, GenerationParams

ProgressFactory = Callable[[str, int], AbstractContextManager[Callable[[int], None]]]
"""(description, total) -> a context yielding `advance(n)`; the CLI gives a progress bar."""

REDACTED_BENCHMARKS = frozenset({"gpqa"})
"""Benchmarks whose text (and so experts' answers, which quote it) is never stored."""


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
    gpqa_subset: str = "diamond"
    aggregator_expert: str | None = None
    """The expert the `llm` aggregator uses; default: the one `coe aggregators probe` stored."""
    aggregator_pool: str | None = None
    """The registry file holding the aggregator expert, when it is not in the pool."""
    chunk_size: int = Field(default=2000, ge=1)


def seeded_split(spec: str, seed: int) -> str:
    """`random:N:S` moves with the run's seed (S + seed); other specs are fixed."""
    kind, _, rest = spec.partition(":")
    if kind != "random":
        return spec
    n, _, base = rest.partition(":")
    return f"random:{n}:{int(base or 0) + seed}"


def new_run_id(bench: str) -> str:
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{bench}-{secrets.token_hex(2)}"


def run_eval(
    config: EvalConfig,
    *,
    store: Store,
    backends: dict[str, Backend],
    data_dir: Path | None,
    cache_dir: Path,
    run_id: str | None = None,
    progress: ProgressFactory | None = None,
) -> EvalSummary:
    """Run (or resume, with `run_id`) an evaluation and return its summary."""
    runs = RunStore(store)
    if run_id is None:
        run_id = new_run_id(config.bench)
        runs.create(run_id, config.model_dump(mode="json"))
    else:
        _check_resumable(runs.get(run_id).config, config, run_id)
    registry = Registry.from_file(Path(config.pool), data_dir)
    queries = load_benchmark(config.bench, data_dir, subset=config.gpqa_subset)
    by_id = {query.id: query for query in queries}
    params = GenerationParams(max_tokens=config.max_tokens)
    cache = MemoryCache()
    cache.put_many(
        {
            (expert, item): Generation(text, n_prompt, n_completion, latency)
            for expert, item, text, n_prompt, n_completion, latency in runs.stored_texts(run_id)
        }
    )
    scheduler = Scheduler(backends, cache=cache)
    composer = Composer(registry, backends=backends, scheduler=scheduler, params=params)
    collaborators = _Collaborators(config, cache_dir)
    aggregators = _aggregators(config, registry, scheduler, store, data_dir)
    bar = progress or (lambda description, total: nullcontext(lambda n: None))
    for seed in config.seeds:
        split = make_split(seeded_split(config.split, seed), queries, config.bench, data_dir)
        test = [by_id[i] for i in split.test_ids]
        if config.limit and config.limit < len(test):
            test = [by_id[i] for i in stratified_sample(test, config.limit, seed)]
        profile_items = [by_id[i] for i in split.profile_ids]
        with bar(f"seed {seed}: profiling {len(profile_items)} items", len(profile_items) * len(registry)) as advance:
            measured = profile(
                store,
                registry,
                bench=config.bench,
                split=split.spec,
                items=profile_items,
                scheduler=scheduler,
                params=params,
                annotator=collaborators.annotator if "skill" in config.routers else None,
                keep_text=config.bench not in REDACTED_BENCHMARKS,
                on_progress=advance,
            )
        routers = _fit_routers(config, seed, measured.outcomes, collaborators)
        if "oracle" in routers:
            with bar(f"seed {seed}: every expert on the test items (oracle)", len(test) * len(registry)) as advance:
                correct, _ = measure(registry, test, scheduler, params, advance)
            routers["oracle"].fit(Outcomes(tuple(registry.experts), tuple(test), correct))
        done = runs.finished_items(run_id, seed)
        todo = [query for query in test if query.id not in done]
        with bar(f"seed {seed}: evaluating {len(todo)} test items", len(todo)) as advance:
            for chunk in _chunks(todo, config.chunk_size):
                results = composer.compare(chunk, routers, aggregators)
                runs.save_chunk(run_id, seed, **_rows(results, chunk, config.bench, registry))
                advance(len(chunk))
    summary = summarize(run_id, config, runs, registry)
    runs.finish(run_id, summary.model_dump(mode="json"))
    return summary


def _aggregators(
    config: EvalConfig, pool: Registry, scheduler: Scheduler, store: Store, data_dir: Path | None
) -> dict[str, Aggregator]:
    expert = config.aggregator_expert
    registry = Registry.from_file(Path(config.aggregator_pool), data_dir) if config.aggregator_pool else pool
    if "llm" in config.aggregators and expert is None:
        stored = latest_aggregator_choice(store, pool=pool.source, bench=config.bench)
        expert = stored.expert_id if stored else None
    return {
        name: make_aggregator(name, registry=registry, scheduler=scheduler, expert=expert)
        for name in config.aggregators
    }


class _Collaborators:
    """The encoder and skill annotator routers share, built only when a router needs them."""

    def __init__(self, config: EvalConfig, cache_dir: Path) -> None:
        self.config = config
        self.cache_dir = cache_dir
        self._encoder: Any = None
        self._annotator: Any = None

    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            from coe.embed import Encoder

            self._encoder = Encoder(cache_dir=self.cache_dir)
        return self._encoder

    @property
    def annotator(self) -> Any:
        if self._annotator is None:
            from coe.skills import EmbeddingAnnotator, bundled_taxonomy

            taxonomy = bundled_taxonomy("mmlu_pro" if self.config.bench == "mmlu-pro" else "gpqa")
            self._annotator = EmbeddingAnnotator(taxonomy, self.encoder)
        return self._annotator

    def params_for(self, name: str) -> dict[str, Any]:
        """The collaborators router `name` takes (skill gets the annotator, which holds the encoder)."""
        takes = make_router(name).get_params()
        needs = ("annotator",) if "annotator" in takes else ("encoder",) if "encoder" in takes else ()
        return {need: getattr(self, need) for need in needs}


def _fit_routers(config: EvalConfig, seed: int, outcomes: Outcomes, shared: _Collaborators) -> dict[str, Router]:
    routers = {}
    for name in dict.fromkeys(("best-single", *config.routers)):
        router = make_router(name, k=config.k, random_state=seed, **shared.params_for(name))
        routers[name] = router if name == "oracle" else router.fit(outcomes)
    return routers


def _rows(
    results: dict[tuple[str, str], BatchResult], chunk: Sequence[Query], bench: str, registry: Registry
) -> dict[str, list[dict[str, Any]]]:
    """The database rows of one chunk: each generation once, each route once, each fused answer."""
    redact = bench in REDACTED_BENCHMARKS
    category = {query.id: query.category for query in chunk}
    generations: dict[tuple[str, str], dict[str, Any]] = {}
    routes: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    seen_routers = set()
    for (router, aggregator), result in results.items():
        if router not in seen_routers:
            seen_routers.add(router)
            routes.extend(
                {
                    "router": router,
                    "item_id": route.query_id,
                    "experts_json": json.dumps([[c.expert, round(c.score, 6)] for c in route.experts]),
                    "reason": route.reason,
                }
                for route in result.routes
            )
        for answer in result.answers:
            rows.append(
                {
                    "router": router,
                    "aggregator": aggregator,
                    "item_id": answer.query_id,
                    "category": category[answer.query_id],
                    "choice": answer.choice,
                    "correct": bool(answer.correct),
                    "n_calls": len(answer.experts),
                    "cost_usd": answer.cost_usd,
                    "latency_s": answer.timings.get("total_s", 0.0),
                }
            )
            for expert_answer in answer.expert_answers:
                key = (expert_answer.expert, answer.query_id)
                if key not in generations:
                    keep_text = not redact and registry[expert_answer.expert].backend_kind != "replay"
                    generations[key] = {
                        "expert_id": expert_answer.expert,
                        "item_id": answer.query_id,
                        "choice": expert_answer.choice,
                        "text": expert_answer.text if keep_text else None,
                        "n_prompt_tokens": expert_answer.n_prompt_tokens,
                        "n_completion_tokens": expert_answer.n_completion_tokens,
                        "latency_s": expert_answer.latency_s,
                        "error": expert_answer.error,
                    }
    return {"generations": list(generations.values()), "routes": routes, "results": rows}


def _chunks(items: Sequence[Query], size: int) -> Iterator[Sequence[Query]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _check_resumable(stored: dict[str, Any], config: EvalConfig, run_id: str) -> None:
    wanted = config.model_dump(mode="json")
    differing = sorted(key for key in wanted.keys() | stored.keys() if stored.get(key) != wanted.get(key))
    if differing:
        details = ", ".join(f"{key}: stored {stored.get(key)!r}, given {wanted.get(key)!r}" for key in differing)
        raise RunError(f"run {run_id!r} was started with other settings ({details}); resume it unchanged")
