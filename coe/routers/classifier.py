"""Composition of Experts' two-step router (Jain et al., 2024): a small classifier maps a query to a
category, and a category→expert table (from per-category profiles) maps the category to experts.

The classifier is a scikit-learn logistic regression on the query's sentence embedding, trained on
the profiling items' categories or on any labelled set given to `fit`. The table ranks experts per
category by accuracy − λ·cost; under a budget (average active parameters, or cost, per query) a
Lagrange multiplier on size is raised until the table fits it. When the classifier's top probability
is under `threshold`, the query goes to the generalist (`fallback`, default the best overall expert).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Self

import numpy as np

from coe.embed import Encoder
from coe.errors import UnknownExpertError
from coe.outcomes import Outcomes
from coe.routers.base import Pick, Router, penalized, top_k
from coe.schema import Query

BudgetUnit = Literal["params_b", "cost"]
MULTIPLIERS = np.concatenate([[0.0], np.geomspace(1e-5, 1e3, 161)])
"""Lagrange multipliers on size tried, smallest first."""


def expert_sizes(outcomes: Outcomes, unit: BudgetUnit) -> np.ndarray:
    """Per-expert size in the budget's unit; an unknown parameter count counts as the largest known."""
    if unit == "cost":
        return outcomes.costs()
    sizes = np.array([np.nan if e.params_b is None else e.params_b for e in outcomes.experts], dtype=float)
    largest = np.nanmax(sizes) if np.isfinite(sizes).any() else 1.0
    return np.where(np.isnan(sizes), largest, sizes)


def budgeted_table(
    accuracy: np.ndarray, shares: np.ndarray, sizes: np.ndarray, k: int, budget: float | None
) -> tuple[np.ndarray, float]:
    """Experts ranked per category by accuracy − μ·size, (n_categories, n_experts), with the smallest μ
    whose first k experts stay within `budget` on average per query (categories weighted by
    `shares`); and that μ. When no μ fits, experts are ranked smallest first."""
    n = accuracy.shape[1]
    if budget is None:
        return top_k(accuracy, n), 0.0
    for multiplier in MULTIPLIERS:
        ranking = top_k(accuracy - multiplier * sizes, n)
        if float(shares @ sizes[ranking[:, :k]].sum(axis=1)) <= budget:
            return ranking, float(multiplier)
    return top_k(-np.tile(sizes, (len(accuracy), 1)), n), float("inf")


class ClassifierRouter(Router):
    """Query → category (logistic regression on embeddings) → that category's best experts."""

    name = "classifier"

    def __init__(
        self,
        *,
        k: int = 1,
        threshold: float = 0.5,
        fallback: str | None = None,
        budget: float | None = None,
        budget_unit: BudgetUnit = "params_b",
        cost_weight: float = 0.0,
        regularization: float = 1.0,
        encoder: Encoder | None = None,
        random_state: int = 0,
    ) -> None:
        self.k = k
        self.threshold = threshold
        self.fallback = fallback
        self.budget = budget
        self.budget_unit = budget_unit
        self.cost_weight = cost_weight
        self.regularization = regularization
        self.encoder = encoder
        self.random_state = random_state

    def fit(self, outcomes: Outcomes, labelled: Sequence[Query] | None = None) -> Self:
        """Fit the table on `outcomes`; the classifier on `labelled` queries' categories when given,
        else on the profiling items' own categories."""
        self.experts_ = outcomes.expert_ids
        self.overall_ = outcomes.accuracy()
        ranked = top_k(penalized(self.overall_, outcomes.costs(), self.cost_weight), len(self.experts_))
        if self.fallback is not None and self.fallback not in self.experts_:
            raise UnknownExpertError(self.fallback, self.experts_, "the classifier router's `fallback`")
        self.fallback_ = self.experts_.index(self.fallback) if self.fallback else int(ranked[0])
        self.generalists_ = np.array([self.fallback_, *(int(i) for i in ranked if i != self.fallback_)])
        training = [q for q in (labelled if labelled is not None else outcomes.items) if q.category]
        self.categories_ = sorted({q.category for q in training if q.category})
        per_category = outcomes.category_accuracy()
        accuracy = np.array([per_category.get(c, outcomes.accuracy()) for c in self.categories_]).reshape(
            len(self.categories_), len(self.experts_)
        )
        self.accuracy_ = accuracy
        counts = np.array([sum(q.category == c for q in training) for c in self.categories_], dtype=float)
        shares = counts / counts.sum() if counts.sum() else counts
        self.table_, self.multiplier_ = budgeted_table(
            penalized(accuracy, outcomes.costs(), self.cost_weight),
            shares,
            expert_sizes(outcomes, self.budget_unit),
            self.k,
            self.budget,
        )
        self.encoder_ = self.encoder if self.encoder is not None else Encoder()
        self.classifier_ = self._train(training) if len(self.categories_) > 1 else None
        return self

    def _train(self, training: Sequence[Query]) -> Any:
        from sklearn.linear_model import LogisticRegression

        vectors = self.encoder_.encode([q.text for q in training])
        labels = [self.categories_.index(q.category or "") for q in training]
        model = LogisticRegression(C=self.regularization, max_iter=2000, random_state=self.random_state)
        return model.fit(vectors, labels)

    def category_probabilities(self, queries: Sequence[Query]) -> np.ndarray:
        """(n_queries, n_categories) classifier probabilities, columns in `categories_` order."""
        if self.classifier_ is None:
            return np.ones((len(queries), max(len(self.categories_), 1)))
        vectors = self.encoder_.encode([q.text for q in queries])
        probabilities = np.zeros((len(queries), len(self.categories_)))
        probabilities[:, self.classifier_.classes_] = self.classifier_.predict_proba(vectors)
        return probabilities

    def _route(self, queries: list[Query]) -> list[Pick]:
        if not queries:
            return []
        probabilities = self.category_probabilities(queries)
        routes = []
        for row in probabilities:
            best = int(np.argmax(row))
            if not self.categories_ or row[best] < self.threshold:
                name = self.categories_[best] if self.categories_ else "none"
                reason = f"uncertain category ({name} p={row[best]:.2f} < {self.threshold}): generalist first"
                routes.append(Pick.ranked(self.generalists_, self.overall_, self.k, reason))
                continue
            reason = f"category {self.categories_[best]} (p={row[best]:.2f}): its best experts"
            routes.append(Pick.ranked(self.table_[best], self.accuracy_[best], self.k, reason))
        return routes
