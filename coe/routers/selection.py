"""Choosing a router's hyperparameters on the profiling items alone (never on test items).

Every learned router (knn, cluster, mf) picks among candidate settings the same way: k-fold
cross-validation over the profiling items, scored by how often the top-k vote its estimates would
drive is right on the held-out fold, and the one-standard-error rule toward the smoothest setting,
so local estimates must earn their variance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

from coe.routers.base import top_k

N_FOLDS = 5
Setting = TypeVar("Setting")

FoldEstimates = Callable[[np.ndarray, np.ndarray], Sequence[np.ndarray]]
"""(train item indices, held-out item indices) -> one (n_held, n_experts) estimate per grid entry."""


def vote_accuracy(estimates: np.ndarray, correct: np.ndarray, k: int) -> float:
    """How often a vote of each row's top-k experts (weighted by `estimates`) would be right, assuming
    wrong answers never coincide: the right letter's weight must beat the heaviest wrong voter."""
    picked = top_k(estimates, k)
    weights = np.take_along_axis(estimates, picked, axis=1)
    right = np.nan_to_num(np.take_along_axis(correct, picked, axis=1)) == 1
    return float(np.mean(np.sum(weights * right, axis=1) > np.max(weights * ~right, axis=1)))


def cross_validated_rates(
    correct: np.ndarray, fold_estimates: FoldEstimates, n_settings: int, *, k: int, seed: int
) -> np.ndarray:
    """Per setting, the held-out vote accuracy over all profiling items (`correct` is their matrix)."""
    n = len(correct)
    folds = np.random.default_rng(seed).permutation(n) % N_FOLDS
    hits = np.zeros(n_settings)
    for fold in range(N_FOLDS):
        train, held = np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)
        if len(train) == 0 or len(held) == 0:
            continue
        for g, estimate in enumerate(fold_estimates(train, held)):
            hits[g] += vote_accuracy(estimate, correct[held], k) * len(held)
    return hits / max(n, 1)


def one_standard_error(rates: np.ndarray, n: int) -> int:
    """The first (smoothest) setting within one binomial standard error of the best rate."""
    best = rates.max()
    tolerance = np.sqrt(best * (1 - best) / max(n, 1))
    return int(np.flatnonzero(rates >= best - tolerance)[0])


def choose_by_cross_validation(
    correct: np.ndarray, fold_estimates: FoldEstimates, grid: Sequence[Setting], *, k: int, seed: int
) -> Setting:
    """The smoothest entry of `grid` (ordered smoothest first) whose held-out top-k vote is within one
    standard error of the best."""
    if len(grid) == 1:
        return grid[0]
    rates = cross_validated_rates(correct, fold_estimates, len(grid), k=k, seed=seed)
    return grid[one_standard_error(rates, len(correct))]


def shrunk_accuracy(hits: np.ndarray, counts: np.ndarray, prior: np.ndarray, strength: float) -> np.ndarray:
    """(hits + strength·prior) / (counts + strength): few measured outcomes stay near the prior;
    an infinite strength is the prior itself."""
    if np.isinf(strength):
        return np.broadcast_to(prior, np.shape(hits)).astype(float)
    return (hits + strength * prior) / (counts + strength)
