"""Routing quality on the reference pool, from recorded answers (no inference):

    .venv/bin/python -m benchmarks.routing_quality [--seeds 0 1 2] [--k 3]

The 8 recorded models of `registry/replay-mmlu-pro-ref8.yaml` on MMLU-Pro test; per seed, the
`random:1400:SEED` split profiles (routers fit on its outcomes) and the rest is the test. Each router's
picks are fused by coe's own majority and weighted votes over the recorded letters (the `pred` column
of the outcomes table, equal to `read_choice` on the raw responses), scored against the current gold.
Prints accuracy gain over the best single expert (chosen on the profiling split), mean ± std over seeds,
and experts called per query. Embeddings come from the cache under COE_CACHE_DIR (about 4 minutes on
2 cores the first time with MiniLM, seconds with `--encoder static` once it is distilled).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import yaml

from coe.aggregate import MajorityVote, WeightedVote
from coe.backends.replay import NO_RECORD
from coe.compose import CompositionBuilder, RouterSpec
from coe.datasets import load_mmlu_pro
from coe.embed import DEFAULT_ENCODER, ENCODERS
from coe.outcomes import Outcomes
from coe.registry import Registry
from coe.resources import bundled_pools
from coe.routers import Router
from coe.schema import ExpertAnswer, Query, Route
from coe.settings import Settings, apply_offline_environment
from coe.splits import make_split
from coe.types import Failure

POOL = bundled_pools()["replay-mmlu-pro-ref8"]
OUTCOMES = "outcomes/mmlu_pro_tiger_outcomes_long.csv.gz"


def recorded_letters(data_dir: Path, registry: Registry, queries: Sequence[Query]) -> tuple[np.ndarray, np.ndarray]:
    """(n_queries, n_experts) recorded letters ('' where nothing was extracted, None where no record)
    and whether each letter was only guessed by the last-letter fallback of the extraction chain."""
    column = {}
    for j, expert in enumerate(registry.experts):
        assert expert.backend is not None and expert.backend.kind == "replay"
        column[expert.backend.responses.name.removesuffix(".jsonl.gz")] = j
    row = {query.id: i for i, query in enumerate(queries)}
    letters = np.full((len(queries), len(column)), None, dtype=object)
    guessed = np.zeros((len(queries), len(column)), dtype=bool)
    with gzip.open(data_dir / OUTCOMES, "rt") as lines:
        for record in csv.DictReader(lines):
            j = column.get(record["model"])
            if j is not None and record["question_id"] in row:
                letters[row[record["question_id"]], j] = record["pred"]
                guessed[row[record["question_id"]], j] = record["extract_level"] == "l3"
    return letters, guessed


def correctness(letters: np.ndarray, queries: Sequence[Query]) -> np.ndarray:
    gold = np.array([query.gold for query in queries], dtype=object)
    known = letters != None  # noqa: E711 (elementwise)
    return np.where(known, (letters == gold[:, None]).astype(float), np.nan)


AGGREGATIONS = ("majority", "weighted", "majority, guesses ×½", "weighted, guesses ×½")
GUESS_WEIGHT = 0.5


def fused_accuracy(
    routes: Sequence[Route], queries: Sequence[Query], letters: np.ndarray, guessed: np.ndarray, ids: list[str]
) -> dict[str, float]:
    """Accuracy of each aggregation over the routes, and experts called per query.

    The two "guesses ×½" columns measure a proposed vote, not yet an aggregator of coe: a letter that
    only the last-letter fallback of the extraction chain found counts half. They are emulated with
    coe's own WeightedVote on a copy of the route whose scores are scaled per answer."""
    column = {expert: j for j, expert in enumerate(ids)}
    hits = dict.fromkeys(AGGREGATIONS, 0)
    calls = 0
    for route, query, row, guesses in zip(routes, queries, letters, guessed, strict=True):
        answers = [
            ExpertAnswer(expert=e, text="", choice=row[column[e]] or None)
            if row[column[e]] is not None
            else ExpertAnswer(expert=e, text="", error=Failure(NO_RECORD, kind="no_record", expert=e))
            for e in route.expert_ids
        ]
        calls += len(answers)
        discount = [GUESS_WEIGHT if guesses[column[c.expert]] else 1.0 for c in route.experts]
        # one vote each (half for a guess); the router's scores still break ties, as in MajorityVote
        equal = _rescored(route, [d + 1e-6 * c.score for c, d in zip(route.experts, discount, strict=True)])
        weighted = _rescored(route, [c.score * d for c, d in zip(route.experts, discount, strict=True)])
        for name, aggregator, fused_route in (
            ("majority", MajorityVote(), route),
            ("weighted", WeightedVote(), route),
            ("majority, guesses ×½", WeightedVote(), equal),
            ("weighted, guesses ×½", WeightedVote(), weighted),
        ):
            hits[name] += aggregator.fuse(query, fused_route, answers).choice == query.gold
    scored = {name: count / len(queries) for name, count in hits.items()}
    scored["calls"] = calls / len(queries)
    return scored


def _rescored(route: Route, scores: Sequence[float]) -> Route:
    experts = tuple(c.model_copy(update={"score": s}) for c, s in zip(route.experts, scores, strict=True))
    return route.model_copy(update={"experts": experts})


def router_builder(spec: str, k: int, builder: CompositionBuilder, encoder: str) -> Callable[[int, Outcomes], Router]:
    """`name` or `name:key=value,key=value` (values read as YAML scalars; `k` among them overrides the
    run's k) to a factory fitting that router, with the seed as its `random_state` as in `coe eval`."""
    name, _, rest = spec.partition(":")
    params = {key: yaml.safe_load(value) for key, _, value in (item.partition("=") for item in rest.split(",") if item)}
    chosen_k = int(params.pop("k", k))
    router = RouterSpec(name=name, params=params)
    return lambda seed, outcomes: builder.router(
        router, outcomes, k=chosen_k, seed=seed, bench="mmlu-pro", encoder=encoder
    )


def evaluate_seed(
    seed: int,
    builders: dict[str, Callable[[int, Outcomes], Router]],
    registry: Registry,
    queries: Sequence[Query],
    letters: np.ndarray,
    guessed: np.ndarray,
) -> dict[str, dict[str, float]]:
    """Each router fitted on the seed's profiling outcomes and scored on the rest; the oracle is fitted
    on the test outcomes themselves (an upper bound)."""
    experts, ids = tuple(registry.experts), [expert.id for expert in registry.experts]
    correct = correctness(letters, queries)
    row_of = {query.id: i for i, query in enumerate(queries)}
    split = make_split(f"random:1400:{seed}", queries, "mmlu-pro")
    profile_rows = [row_of[i] for i in split.profile_ids]
    test_rows = [row_of[i] for i in split.test_ids]
    profiling = Outcomes(experts, tuple(queries[i] for i in profile_rows), correct[profile_rows])
    test_queries = [queries[i] for i in test_rows]
    scored = {}
    for name, build in builders.items():
        started = time.perf_counter()
        fitted = profiling if name != "oracle" else Outcomes(experts, tuple(test_queries), correct[test_rows])
        routes = build(seed, fitted).route(test_queries)
        scored[name] = fused_accuracy(routes, test_queries, letters[test_rows], guessed[test_rows], ids)
        scored[name]["seconds"] = time.perf_counter() - started
    return scored


def print_table(results: dict[str, list[dict[str, float]]], command: str) -> None:
    print(f"# {command}")
    print(f"# machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print("# Δ = accuracy points over the best single expert chosen on the profiling split; mean ± std over seeds")
    print(f"{'router':40s} " + " ".join(f"{name:>22s}" for name in AGGREGATIONS) + f" {'calls/q':>8s} {'s':>6s}")
    base = [s["majority"] for s in results["best-single"]]
    for name, per_seed in results.items():
        cells = []
        for aggregation in AGGREGATIONS:
            gains = 100 * (np.array([s[aggregation] for s in per_seed]) - np.array(base))
            cells.append(f"{gains.mean():+6.2f} ± {gains.std():4.2f}")
        calls = np.mean([s["calls"] for s in per_seed])
        seconds = np.mean([s["seconds"] for s in per_seed])
        print(f"{name:40s} " + " ".join(f"{cell:>22s}" for cell in cells) + f" {calls:8.2f} {seconds:6.1f}")
    print(f"best-single accuracy {100 * np.mean(base):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--encoder", choices=list(ENCODERS), default=DEFAULT_ENCODER, help="query encoder")
    parser.add_argument(
        "--routers",
        nargs="+",
        default=[
            "knn",
            "skill",
            "skill:weighting=shift-square",
            "skill:replace=true",
            "skill:prune_below=0.05",
            "classifier",
            "classifier:k=1",
            "cluster",
            "mf",
            "kshot",
        ],
        help="router names, each optionally with parameters: name:key=value,key=value",
    )
    args = parser.parse_args()
    apply_offline_environment()
    settings = Settings()
    assert settings.data_dir is not None, "set COE_DATA_DIR to the shared data folder"
    registry = Registry.from_file(POOL, settings.data_dir)
    queries = load_mmlu_pro("test", settings.data_dir)
    letters, guessed = recorded_letters(settings.data_dir, registry, queries)
    builder = CompositionBuilder(settings)
    specs = [*args.routers, f"random:k={args.k}", "best-single", "all", "oracle"]
    builders = {spec: router_builder(spec, args.k, builder, args.encoder) for spec in specs}
    results: dict[str, list[dict[str, float]]] = {}
    for seed in args.seeds:
        for name, scored in evaluate_seed(seed, builders, registry, queries, letters, guessed).items():
            results.setdefault(name, []).append(scored)
    print_table(results, "python -m benchmarks.routing_quality " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
