"""The numbers of a run, from its stored rows: accuracy mean ± std over seeds per router × aggregator,
Δ vs the best single expert with its paired bootstrap 95% interval, expert calls per query, model
loads, time; per category; the oracle."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict

from coe.evals.bootstrap import paired_bootstrap_interval
from coe.evals.config import EvalConfig
from coe.store import RunStore


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ResultSummary(_Model):
    router: str
    aggregator: str
    k: int
    accuracy_mean: float
    accuracy_std: float
    accuracy_per_seed: list[float]
    delta_vs_best_single: float
    delta_ci95: tuple[float, float] | None = None
    """Paired bootstrap 95% interval of the Δ over the test items (same items, same seeds)."""
    wins: bool = False
    """The whole interval lies above zero: a gain over the best single expert beyond chance."""
    calls_per_query: float
    n_loads: float
    """Distinct models this router needs loaded per seed (expert-batched: loads = distinct bases)."""
    wall_s: float
    """Per seed: routing + this router's share of loads + its experts' generation time + fusing."""
    cost_per_query_usd: float

    def delta_text(self) -> str:
        """Δ in points with its 95% interval, e.g. `+2.63 [+2.31, +2.95]`."""
        delta = f"{100 * self.delta_vs_best_single:+.2f}"
        if self.delta_ci95 is None:
            return delta
        low, high = self.delta_ci95
        return f"{delta} [{100 * low:+.2f}, {100 * high:+.2f}]"


class BestSingle(_Model):
    expert: str
    experts_per_seed: list[str]
    accuracy_mean: float
    accuracy_std: float


class Oracle(_Model):
    accuracy_mean: float
    accuracy_std: float


class ExpertFailures(_Model):
    expert: str
    n_generations: int
    n_failed: int


class EvalSummary(_Model):
    run_id: str
    bench: str
    pool: str
    split: str
    seeds: list[int]
    n_test: int
    k_policy: str = "fixed"
    """How many of the k experts each query asked (`coe.policy.KPolicy`); calls/query is what it spent."""
    kshot: int | None = None
    """The kshot router's K per category (None: it saw every profiling item)."""
    max_cost_usd: float | None = None
    """The run's cap on a query's estimated cost (None: no cap)."""
    results: list[ResultSummary]
    best_single: BestSingle
    oracle: Oracle | None
    per_category: dict[str, dict[str, float]]
    """"router/aggregator" -> category -> accuracy (mean over seeds)."""
    failures: list[ExpertFailures] = []
    """Per expert that failed at least once: its stored generations and how many failed (no answer)."""
    failure_rate: float = 0.0
    """Failed generations / all generations of the run."""


def summarize(run_id: str, config: EvalConfig, runs: RunStore, load_keys: Mapping[str, str]) -> EvalSummary:
    """The run's numbers; `load_keys` maps each expert that needs a model load to its model's key."""
    rows = runs.results(run_id)
    accuracy: dict[tuple[str, str], dict[int, dict[str, bool]]] = defaultdict(lambda: defaultdict(dict))
    calls: dict[tuple[str, str], list[int]] = defaultdict(list)
    costs: dict[tuple[str, str], list[float]] = defaultdict(list)
    latency: dict[tuple[str, str, int], float] = defaultdict(float)
    by_category: dict[tuple[str, str], dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    n_test: Counter[int] = Counter()
    for row in rows:
        key = (row.router, row.aggregator)
        accuracy[key][row.seed][row.item_id] = row.correct
        calls[key].append(row.n_calls)
        costs[key].append(row.cost_usd)
        latency[row.router, row.aggregator, row.seed] += row.latency_s
        by_category[key][row.category or ""].append(row.correct)
        if key == ("best-single", config.aggregators[0]):
            n_test[row.seed] += 1
    seeds = list(config.seeds)
    loads, chosen = _route_facts(runs, run_id, load_keys, seeds)

    def seed_means(key: tuple[str, str]) -> list[float]:
        return [float(np.mean(list(accuracy[key][seed].values()))) for seed in seeds if accuracy[key][seed]]

    best_key = ("best-single", config.aggregators[0])
    best_scores = seed_means(best_key)
    best_mean = float(np.mean(best_scores)) if best_scores else 0.0

    def interval(key: tuple[str, str]) -> tuple[float, float]:
        """Paired with best-single item by item, within each seed."""
        differences = []
        for seed in seeds:
            mine, best = accuracy[key][seed], accuracy[best_key][seed]
            shared = [item for item in mine if item in best]
            differences.append(np.array([float(mine[item]) - float(best[item]) for item in shared]))
        return paired_bootstrap_interval(differences)

    results = [
        ResultSummary(
            router=router,
            aggregator=aggregator,
            k=config.k,
            accuracy_mean=float(np.mean(scores)),
            accuracy_std=_std(scores),
            accuracy_per_seed=scores,
            delta_vs_best_single=float(np.mean(scores)) - best_mean,
            delta_ci95=(ci := interval((router, aggregator))),
            wins=ci[0] > 0,
            calls_per_query=float(np.mean(calls[router, aggregator])),
            n_loads=float(np.mean([loads.get((router, seed), 0) for seed in seeds])),
            wall_s=float(np.mean([latency[router, aggregator, seed] for seed in seeds])),
            cost_per_query_usd=float(np.mean(costs[router, aggregator])),
        )
        for router in dict.fromkeys(("best-single", *config.routers))
        for aggregator in config.aggregators
        if (scores := seed_means((router, aggregator)))
    ]
    oracle_scores = seed_means(("oracle", config.aggregators[0]))
    failures = runs.failures(run_id)
    n_generations = sum(total for total, _ in failures.values())
    return EvalSummary(
        run_id=run_id,
        bench=config.bench,
        pool=config.pool,
        split=config.split,
        seeds=seeds,
        kshot=config.kshot if "kshot" in config.routers else None,
        n_test=int(np.mean(list(n_test.values()))) if n_test else 0,
        k_policy=config.k_policy,
        max_cost_usd=config.max_cost_usd,
        results=results,
        best_single=BestSingle(
            expert=Counter(chosen).most_common(1)[0][0] if chosen else "",
            experts_per_seed=chosen,
            accuracy_mean=best_mean,
            accuracy_std=_std(best_scores),
        ),
        oracle=Oracle(accuracy_mean=float(np.mean(oracle_scores)), accuracy_std=_std(oracle_scores))
        if oracle_scores
        else None,
        per_category={
            f"{router}/{aggregator}": {category: float(np.mean(values)) for category, values in sorted(cats.items())}
            for (router, aggregator), cats in by_category.items()
        },
        failures=[
            ExpertFailures(expert=expert, n_generations=total, n_failed=failed)
            for expert, (total, failed) in sorted(failures.items())
            if failed
        ],
        failure_rate=sum(failed for _, failed in failures.values()) / max(n_generations, 1),
    )


def _std(values: list[float]) -> float:
    """Sample standard deviation over seeds (0 for a single seed)."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _route_facts(
    runs: RunStore, run_id: str, load_keys: Mapping[str, str], seeds: list[int]
) -> tuple[dict[tuple[str, int], int], list[str]]:
    """From the stored routes, in one pass: distinct models to load per (router, seed), and the
    expert best-single chose in each seed."""
    keys: dict[tuple[str, int], set[str]] = defaultdict(set)
    best: dict[int, str] = {}
    for seed, router, _, experts in runs.routes(run_id):
        keys[router, seed].update(load_keys[expert] for expert, _ in experts if expert in load_keys)
        if router == "best-single" and experts:
            best.setdefault(seed, experts[0][0])
    return {key: len(value) for key, value in keys.items()}, [best[seed] for seed in seeds if seed in best]
