"""Matrix-factorization routing after RouteLLM (Ong et al., 2024) and EmbedLLM (Zhuang et al., 2024),
generalized from a strong/weak pair to N experts: each expert has an embedding v_e, a learned
projection P maps the query's sentence embedding x into the same space, and

    P(expert e answers query q correctly) = σ(⟨P·x_q, v_e⟩ + b_e),

fitted by logistic loss with L2 penalty on the profiling correctness matrix (plain NumPy, full-batch
Adam, seeded, so a fit is deterministic). The biases alone are each expert's overall log-odds; how
much the factors may move away from them (the penalty) is chosen in `fit` by cross-validation on the
profiling items (`coe.routers.selection`), an infinite penalty meaning biases only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Self

import numpy as np

from coe.embed import Encoder
from coe.outcomes import Outcomes
from coe.routers.base import Pick, Router, penalized, top_k
from coe.routers.selection import FoldEstimates, choose_by_cross_validation
from coe.schema import Query

PENALTY_GRID = (np.inf, 1.0, 0.1, 0.01, 0.001)
"""L2 penalties tried, smoothest first; np.inf keeps the biases only (the overall best experts)."""
STEPS = 300
LEARNING_RATE = 0.02
EPSILON = 1e-6


@dataclass(frozen=True, slots=True)
class Factors:
    """A fitted factorization: projection (dim, n_features), expert embeddings (n_experts, dim), biases."""

    projection: np.ndarray
    experts: np.ndarray
    bias: np.ndarray

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        """(n_queries, n_experts) predicted probability of a correct answer. einsum rather than BLAS
        matmul: a query's scores must not depend on the batch it came in (BLAS sums in another order
        for one row than for many)."""
        projected = np.einsum("nf,df->nd", vectors, self.projection)
        return _sigmoid(np.einsum("nd,ed->ne", projected, self.experts) + self.bias)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def overall_log_odds(correct: np.ndarray) -> np.ndarray:
    """Each expert's overall accuracy as log-odds, a half item added each way so 0 and 1 stay finite."""
    known = ~np.isnan(correct)
    hits = np.nansum(correct, axis=0) + 0.5
    counts = known.sum(axis=0) + 1.0
    return np.log(hits / (counts - hits))


def factorize(vectors: np.ndarray, correct: np.ndarray, *, dim: int, penalty: float, seed: int) -> Factors:
    """Fit the factors by full-batch Adam on the masked logistic loss + penalty/2·(‖P‖² + ‖V‖²)."""
    n_items, n_features = vectors.shape
    n_experts = correct.shape[1]
    bias = overall_log_odds(correct)
    if np.isinf(penalty) or n_items == 0:
        return Factors(np.zeros((dim, n_features)), np.zeros((n_experts, dim)), bias)
    rng = np.random.default_rng(seed)
    params = [
        rng.normal(0.0, 1.0 / np.sqrt(n_features), (dim, n_features)),
        rng.normal(0.0, 0.1, (n_experts, dim)),
        bias.copy(),
    ]
    known = ~np.isnan(correct)
    target = np.where(known, correct, 0.0)
    scale = 1.0 / max(int(known.sum()), 1)
    moments = [np.zeros_like(p) for p in params]
    squares = [np.zeros_like(p) for p in params]
    for step in range(1, STEPS + 1):
        projection, experts, b = params
        projected = vectors @ projection.T
        residual = np.where(known, _sigmoid(projected @ experts.T + b) - target, 0.0) * scale
        grads = [
            (residual @ experts).T @ vectors + penalty * projection,
            residual.T @ projected + penalty * experts,
            residual.sum(axis=0),
        ]
        for p, g, m, s in zip(params, grads, moments, squares, strict=True):
            m *= 0.9
            m += 0.1 * g
            s *= 0.999
            s += 0.001 * g * g
            p -= LEARNING_RATE * (m / (1 - 0.9**step)) / (np.sqrt(s / (1 - 0.999**step)) + EPSILON)
    return Factors(*params)


class MfRouter(Router):
    """Top-k experts by predicted probability of a correct answer − λ·cost."""

    name = "mf"

    def __init__(
        self,
        *,
        k: int = 3,
        dim: int = 16,
        penalty: float | None = None,
        cost_weight: float = 0.0,
        encoder: Encoder | None = None,
        random_state: int = 0,
    ) -> None:
        self.k = k
        self.dim = dim
        self.penalty = penalty
        self.cost_weight = cost_weight
        self.encoder = encoder
        self.random_state = random_state

    def fit(self, outcomes: Outcomes) -> Self:
        self.experts_ = outcomes.expert_ids
        self.costs_ = outcomes.costs()
        self.prior_ = outcomes.accuracy()
        self.factors_: Factors | None = None
        self.penalty_ = np.inf
        if outcomes.is_empty:
            return self
        self.encoder_ = self.encoder if self.encoder is not None else Encoder()
        vectors = self.encoder_.encode([item.text for item in outcomes.items]).astype(float)
        grid = [self.penalty] if self.penalty is not None else list(PENALTY_GRID)
        self.penalty_ = choose_by_cross_validation(
            outcomes.correct,
            self._fold_estimates(vectors, outcomes.correct, grid),
            grid,
            k=self.k,
            seed=self.random_state,
        )
        self.factors_ = factorize(
            vectors, outcomes.correct, dim=self.dim, penalty=self.penalty_, seed=self.random_state
        )
        return self

    def _fold_estimates(self, vectors: np.ndarray, correct: np.ndarray, grid: Sequence[float]) -> FoldEstimates:
        def estimates(train: np.ndarray, held: np.ndarray) -> list[np.ndarray]:
            return [
                factorize(
                    vectors[train], correct[train], dim=self.dim, penalty=p, seed=self.random_state
                ).probabilities(vectors[held])
                for p in grid
            ]

        return estimates

    def scores(self, queries: Sequence[Query]) -> np.ndarray:
        """(n_queries, n_experts) predicted probability that each expert answers each query correctly.
        With an infinite penalty the factors are zero and every query scores each expert's overall
        log-odds, so the query is not embedded."""
        if self.factors_ is None:
            return np.tile(self.prior_, (len(queries), 1))
        if np.isinf(self.penalty_):
            return np.tile(_sigmoid(self.factors_.bias), (len(queries), 1))
        vectors = self.encoder_.encode([query.text for query in queries]).astype(float)
        return self.factors_.probabilities(vectors)

    def _route(self, queries: list[Query]) -> list[Pick]:
        if not queries:
            return []
        probability = self.scores(queries)
        ranking = top_k(penalized(probability, self.costs_, self.cost_weight), len(self.experts_))
        k = min(self.k, len(self.experts_))
        if self.factors_ is None:
            basis = "declared priors (no profiling items)"
        elif np.isinf(self.penalty_):
            basis = "overall accuracy (cross-validation found the factors no better)"
        else:
            basis = f"matrix factorization (dim {self.dim}, penalty {self.penalty_:g})"
        picks = []
        for row, order in zip(probability, ranking, strict=True):
            estimates = ", ".join(f"{self.experts_[i]} {row[i]:.2f}" for i in order[:k])
            picks.append(Pick.ranked(order, row, k, f"predicted correctness by {basis}: {estimates}"))
        return picks
