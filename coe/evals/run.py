"""`coe eval`: routers × aggregators on a benchmark, against honest baselines, over several seeds.

For each seed: split the benchmark, profile the pool on the profiling items (or reuse the stored
profile), fit each router through the composition builder (`kshot`, given `--kshot K`, on K items
of each category drawn from the profiling items instead), then route the test items in chunks,
run the union of the routers' picks once (expert-batched), fuse with every aggregator and store each
chunk in one transaction, so a run killed midway resumes where it stopped and never recomputes a
finished item.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from coe.answers import question_prompt
from coe.backends import Backend
from coe.compose import (
    AggregatorSpec,
    CompositionBuilder,
    GenerationSpec,
    KShotProfile,
    ProgressFactory,
    RouterSpec,
    SplitProfile,
)
from coe.composer import BatchResult, Composer
from coe.costs import CHARS_PER_TOKEN, affordable, query_cost_bounds, usd
from coe.datasets import is_redacted, stored_error
from coe.errors import RunError
from coe.evals.config import ADDED_FIELDS, EvalConfig, seeded_split
from coe.evals.summary import EvalSummary, summarize
from coe.executors.base import ExecutorKind
from coe.outcomes import Outcomes
from coe.policy import KPolicy
from coe.profile import expert_fingerprint, measure
from coe.recovery import Recovery
from coe.registry import Registry
from coe.routers import ROUTERS
from coe.routers.base import Router
from coe.scheduler import MemoryCache, Scheduler
from coe.schema import Answer, Query
from coe.settings import Settings
from coe.splits import Split, stratified_sample
from coe.store import RunStore, Store
from coe.types import Generation


def new_run_id(bench: str) -> str:
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{bench}-{secrets.token_hex(2)}"


def run_eval(
    config: EvalConfig,
    *,
    settings: Settings,
    backends: Mapping[str, Backend] | None = None,
    store: Store | None = None,
    run_id: str | None = None,
    progress: ProgressFactory | None = None,
    executor: ExecutorKind = "local",
) -> EvalSummary:
    """Run (or resume, with `run_id`) an evaluation and return its summary. Everything that can be
    checked (pool, benchmark, splits, k, aggregators) is checked before a new run is stored; a resumed
    run must have the same settings and experts, and asks again the items whose generations failed.
    `executor="ray"` runs the experts on Ray actors (the cluster at `settings.ray_address`, or a
    private local one), with the same results; the run's models are freed when it ends."""
    backends = CompositionBuilder(settings).backends if backends is None else backends
    scheduler = Scheduler(backends, cache=MemoryCache(), executor=executor, ray_address=settings.ray_address)
    try:
        return _run_eval(config, settings, scheduler, store or Store(settings.database_url), run_id, progress)
    finally:
        scheduler.close()


def _run_eval(
    config: EvalConfig,
    settings: Settings,
    scheduler: Scheduler,
    store: Store,
    run_id: str | None,
    progress: ProgressFactory | None,
) -> EvalSummary:
    runs = RunStore(store)
    cache = scheduler.cache
    assert isinstance(cache, MemoryCache)
    builder = CompositionBuilder(settings, scheduler=scheduler, store=store, progress=progress)
    registry = builder.pool(config.pool)
    fingerprint = pool_fingerprint(registry)
    picking = [name for name in config.routers if ROUTERS[name].picks_k]
    if picking and config.k > len(registry):
        raise RunError(
            f"--k {config.k} is more than the pool's {len(registry)} experts ({registry.source}), "
            f"for the routers that pick k: {', '.join(picking)}"
        )
    splits = {seed: _seed_split(builder, config, seed) for seed in config.seeds}
    by_id = {query.id: query for query in builder.benchmark(config.bench, config.gpqa_subset)}
    tests = {seed: _test_items(config, split, by_id, seed) for seed, (_, split) in splits.items()}
    if config.max_cost_usd is not None:
        _check_cap(config.max_cost_usd, config.max_tokens, registry, [q for test in tests.values() for q in test])
    if run_id is None:
        run_id = new_run_id(config.bench)
        runs.create(run_id, config.model_copy(update={"pool_fingerprint": fingerprint}).model_dump(mode="json"))
    else:
        stored = runs.get(run_id).config
        _check_resumable(stored, config.model_copy(update={"pool_fingerprint": stored.get("pool_fingerprint")}), run_id)
        if stored.get("pool_fingerprint") != fingerprint:
            raise RunError(
                f"run {run_id!r} was started on other experts than {registry.source} holds now; resume it unchanged"
            )
        runs.reopen_failed(run_id)
    cache.put_many(
        {
            (expert, item): Generation(text, n_prompt, n_completion, latency)
            for expert, item, text, n_prompt, n_completion, latency in runs.stored_texts(run_id)
        }
    )
    params = GenerationSpec(max_tokens=config.max_tokens).params()
    recovery = Recovery(replace=config.fallback)
    policy = KPolicy.parse(config.k_policy)
    composer = Composer(
        registry,
        backends=builder.backends,
        scheduler=scheduler,
        params=params,
        recovery=recovery,
        k_policy=policy,
        max_cost_usd=config.max_cost_usd,
    )
    bar = builder.progress
    for seed, (source, _) in splits.items():
        test = tests[seed]
        outcomes, bench = builder.outcomes(
            source, registry, params, annotate="skill" in config.routers, encoder=config.encoder
        )
        fitted_on = {name: outcomes for name in ("best-single", *config.routers)}
        if config.kshot and "kshot" in config.routers:
            shots = KShotProfile(**source.model_dump(), kshot=config.kshot, seed=seed)
            fitted_on["kshot"] = builder.kshot_outcomes(shots, registry, params)
        routers: dict[str, Router] = {
            name: builder.router(
                RouterSpec(name=name), fitted_on[name], k=config.k, seed=seed, bench=bench, encoder=config.encoder
            )
            for name in fitted_on
        }
        builder.fit_policy(composer, [r for r in routers.values() if r.name != "oracle"], outcomes, params)
        aggregators = {
            name: builder.aggregator(
                AggregatorSpec(name=name, expert=config.aggregator_expert, pool=config.aggregator_pool),
                registry,
                bench,
                routers=[router for router in routers.values() if router.name != "oracle"],
                outcomes=outcomes,
                params=params,
                seed=seed,
            )
            for name in config.aggregators
        }
        if "oracle" in routers:
            with bar(f"seed {seed}: every expert on the test items (oracle)", len(test) * len(registry)) as advance:
                correct, _ = measure(registry, test, scheduler, params, advance)
            routers["oracle"].fit(Outcomes(tuple(registry.experts), tuple(test), correct))
        done = runs.finished_items(run_id, seed)
        todo = [query for query in test if query.id not in done]
        with bar(f"seed {seed}: evaluating {len(todo)} test items", len(todo)) as advance:
            for chunk in _chunks(todo, config.chunk_size):
                results = composer.compare(chunk, routers, aggregators)
                runs.save_chunk(run_id, seed, **_rows(results, chunk, config.bench, registry, scheduler))
                advance(len(chunk))
    builder.flush()
    load_keys = {e.id: e.load_key for e in registry.experts if scheduler.backend_for(e).capabilities.needs_load}
    summary = summarize(run_id, config, runs, load_keys)
    runs.finish(run_id, summary.model_dump(mode="json"))
    return summary


def pool_fingerprint(registry: Registry) -> str:
    """The identity of a pool's experts (their full specs, in order): a resumed run must use the same."""
    specs = "\n".join(expert_fingerprint(expert) for expert in registry.experts)
    return hashlib.sha256(specs.encode()).hexdigest()[:16]


def _seed_split(builder: CompositionBuilder, config: EvalConfig, seed: int) -> tuple[SplitProfile, Split]:
    source = SplitProfile(bench=config.bench, split=seeded_split(config.split, seed), gpqa_subset=config.gpqa_subset)
    return source, builder.split(source)


def _test_items(config: EvalConfig, split: Split, by_id: Mapping[str, Query], seed: int) -> list[Query]:
    """A seed's test items: the split's, or `config.limit` of them drawn stratified by category."""
    test = [by_id[i] for i in split.test_ids]
    if config.limit and config.limit < len(test):
        return [by_id[i] for i in stratified_sample(test, config.limit, seed)]
    return test


def _prompt_chars(query: Query) -> int:
    return len(question_prompt(query).text)


def _check_cap(max_cost_usd: float, max_tokens: int, registry: Registry, queries: Sequence[Query]) -> None:
    """Refuse, before a run is stored, a cap that admits no expert for the longest test prompt (the
    composer would refuse it midway)."""
    longest = max(queries, key=_prompt_chars, default=None)
    if longest is not None:
        affordable(query_cost_bounds(registry.experts, longest, max_tokens), max_cost_usd, longest.id)


def _rows(
    results: dict[tuple[str, str], BatchResult],
    chunk: Sequence[Query],
    bench: str,
    registry: Registry,
    scheduler: Scheduler,
) -> dict[str, list[dict[str, Any]]]:
    """The database rows of one chunk: each generation once, each route once, each fused answer."""
    redact = is_redacted(bench)
    category = {query.id: query.category for query in chunk}
    prompt_chars = {query.id: _prompt_chars(query) for query in chunk}
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
                    "cost_usd": answer.cost_usd or _estimated_cost(answer, prompt_chars[answer.query_id], registry),
                    "latency_s": answer.timings.get("total_s", 0.0),
                }
            )
            for expert_answer in answer.expert_answers:
                key = (expert_answer.expert, answer.query_id)
                if key not in generations:
                    expert = registry[expert_answer.expert]
                    keep_text = not redact and not scheduler.backend_for(expert).capabilities.recorded
                    generations[key] = {
                        "expert_id": expert_answer.expert,
                        "item_id": answer.query_id,
                        "choice": expert_answer.choice,
                        "text": expert_answer.text if keep_text else None,
                        "n_prompt_tokens": expert_answer.n_prompt_tokens,
                        "n_completion_tokens": expert_answer.n_completion_tokens,
                        "latency_s": expert_answer.latency_s,
                        "error": stored_error(expert_answer.error, redact),
                    }
    return {"generations": list(generations.values()), "routes": routes, "results": rows}


def _estimated_cost(answer: Answer, prompt_chars: int, registry: Registry) -> float:
    """What an answer would have cost when its experts report no tokens (recorded responses): four
    characters a token of the prompt and of each response, at each expert's registry price, so replay
    evaluations can trace accuracy against cost."""
    return sum(
        usd(registry[a.expert], (prompt_chars + len(a.text)) / CHARS_PER_TOKEN)
        for a in answer.expert_answers
        if a.error is None and a.n_prompt_tokens + a.n_completion_tokens == 0
    )


def _chunks(items: Sequence[Query], size: int) -> Iterator[Sequence[Query]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _check_resumable(stored: dict[str, Any], config: EvalConfig, run_id: str) -> None:
    stored = {**ADDED_FIELDS, **stored}
    wanted = config.model_dump(mode="json")
    differing = sorted(key for key in wanted.keys() | stored.keys() if stored.get(key) != wanted.get(key))
    if differing:
        details = ", ".join(f"{key}: stored {stored.get(key)!r}, given {wanted.get(key)!r}" for key in differing)
        raise RunError(f"run {run_id!r} was started with other settings ({details}); resume it unchanged")
