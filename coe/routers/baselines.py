"""Honest baselines with the router contract: best single expert, random k, all experts, oracle."""

from __future__ import annotations

from typing import Self

import numpy as np

from coe.errors import UnknownExpertError
from coe.outcomes import Outcomes
from coe.routers.base import Pick, Router, penalized, query_rng, top_k
from coe.schema import Query


class BestSingleRouter(Router):
    """Every query to the expert with the best profiling accuracy (declared prior when unprofiled), or
    to the one named by `expert` (a plain proxy to it); the others ranked by accuracy stand behind it."""

    name = "best-single"
    picks_k = False

    def __init__(self, *, cost_weight: float = 0.0, expert: str | None = None) -> None:
        self.cost_weight = cost_weight
        self.expert = expert
        self.k = 1

    def fit(self, outcomes: Outcomes) -> Self:
        self.experts_ = outcomes.expert_ids
        self.scores_ = penalized(outcomes.accuracy(), outcomes.costs(), self.cost_weight)
        ranking = top_k(self.scores_, len(self.experts_))
        if self.expert is not None:
            if self.expert not in self.experts_:
                raise UnknownExpertError(self.expert, self.experts_, "the outcomes best-single was fitted on")
            pinned = self.experts_.index(self.expert)
            ranking = np.array([pinned, *(i for i in ranking if i != pinned)])
        self.ranking_ = ranking
        self.measured_ = not outcomes.is_empty
        return self

    def _route(self, queries: list[Query]) -> list[Pick]:
        best = self.ranking_[0]
        basis = "profiling accuracy" if self.measured_ else "declared prior"
        if self.expert is not None:
            reason = f"the requested expert {self.expert} ({basis} {self.scores_[best]:.3f})"
        else:
            reason = f"best single expert by {basis} ({self.scores_[best]:.3f})"
        return [Pick.ranked(self.ranking_, self.scores_, 1, reason) for _ in queries]


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
            rng = query_rng(self.random_state, query.id)
            picked = rng.choice(n, size=min(self.k, n), replace=False)
            rest = rng.permutation(np.setdiff1d(np.arange(n), picked))
            routes.append(
                Pick(picked, [1.0 / n] * len(picked), f"{len(picked)} at random", rest, [1.0 / n] * len(rest))
            )
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
                routes.append(
                    Pick.ranked(self.rank_, np.zeros(len(self.rank_)), 1, "ORACLE (upper bound): outcome unknown")
                )
                continue
            right = [int(i) for i in self.rank_ if self.correct_[row, i] == 1]
            scores = (self.correct_[row] == 1).astype(float)
            order = np.array(right + [int(i) for i in self.rank_ if int(i) not in right])
            if right:
                reason = f"ORACLE (upper bound): {len(right)} expert(s) were correct on this item"
            else:
                reason = "ORACLE (upper bound): no expert was correct on this item"
            routes.append(Pick.ranked(order, scores, 1, reason))
        return routes
