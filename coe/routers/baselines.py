"""Honest baselines with the router contract: best single expert, random k, all experts, oracle."""

from __future__ import annotations

from typing import Self

from coe.outcomes import Outcomes
from coe.routers.base import Pick, Router, penalized, query_rng, top_k
from coe.schema import Query


class BestSingleRouter(Router):
    """Every query to the expert with the best profiling accuracy (declared prior when unprofiled)."""

    name = "best-single"
    picks_k = False

    def __init__(self, *, cost_weight: float = 0.0) -> None:
        self.cost_weight = cost_weight
        self.k = 1

    def fit(self, outcomes: Outcomes) -> Self:
        self.experts_ = outcomes.expert_ids
        scores = penalized(outcomes.accuracy(), outcomes.costs(), self.cost_weight)
        self.best_ = int(top_k(scores, 1)[0])
        self.score_ = float(scores[self.best_])
        self.measured_ = not outcomes.is_empty
        return self

    def _route(self, queries: list[Query]) -> list[Pick]:
        basis = "profiling accuracy" if self.measured_ else "declared prior"
        reason = f"best single expert by {basis} ({self.score_:.3f})"
        return [Pick([self.best_], [self.score_], reason) for _ in queries]


class RandomRouter(Router):
    """k experts drawn uniformly at random, seeded per query."""

    name = "random"

    def __init__(self, *, k: int = 1, random_state: int = 0) -> None:
        self.k = k
        self.random_state = random_state

    def fit(self, outcomes: Outcomes) -> Self:
        self.experts_ = outcomes.expert_ids
        return self

    def _route(self, queries: list[Query]) -> list[Pick]:
        n = len(self.experts_)
        routes = []
        for query in queries:
            picked = query_rng(self.random_state, query.id).choice(n, size=min(self.k, n), replace=False)
            routes.append(Pick(picked, [1.0 / n] * len(picked), f"{len(picked)} at random"))
        return routes


class AllRouter(Router):
    """Every expert on every query (the all-experts vote); scores are accuracies, for tie-breaks."""

    name = "all"
    picks_k = False

    def __init__(self) -> None:
        self.k = 0

    def fit(self, outcomes: Outcomes) -> Self:
        self.experts_ = outcomes.expert_ids
        self.scores_ = outcomes.accuracy()
        self.order_ = top_k(self.scores_, len(self.experts_))
        return self

    def _route(self, queries: list[Query]) -> list[Pick]:
        reason = f"all {len(self.experts_)} experts"
        return [Pick(self.order_, self.scores_[self.order_], reason) for _ in queries]


class OracleRouter(Router):
    """An expert that was correct on this very item: an upper bound, not a deployable router. Among
    the correct experts it picks the best overall (by accuracy − λ·cost with `cost_weight`).

    Fit it on outcomes that include the items it will route (e.g. every expert run on the test set).
    """

    name = "oracle"
    picks_k = False

    def __init__(self, *, cost_weight: float = 0.0) -> None:
        self.cost_weight = cost_weight
        self.k = 1

    def fit(self, outcomes: Outcomes) -> Self:
        self.experts_ = outcomes.expert_ids
        scores = penalized(outcomes.accuracy(), outcomes.costs(), self.cost_weight)
        self.rank_ = top_k(scores, len(self.experts_))
        self.row_ = {item.id: i for i, item in enumerate(outcomes.items)}
        self.correct_ = outcomes.correct
        return self

    def _route(self, queries: list[Query]) -> list[Pick]:
        routes = []
        for query in queries:
            row = self.row_.get(query.id)
            if row is None:
                routes.append(Pick([self.rank_[0]], [0.0], "ORACLE (upper bound): outcome unknown"))
                continue
            right = [int(i) for i in self.rank_ if self.correct_[row, i] == 1]
            if right:
                reason = f"ORACLE (upper bound): {len(right)} expert(s) were correct on this item"
                routes.append(Pick([right[0]], [1.0], reason))
            else:
                reason = "ORACLE (upper bound): no expert was correct on this item"
                routes.append(Pick([self.rank_[0]], [0.0], reason))
        return routes
