"""Cluster routing, after the Avengers (Zhang et al., 2025): k-means groups the profiled items by their
query embedding, each cluster ranks experts by their accuracy in it, and a query takes the top-k of
its nearest cluster(s).

A cluster of a few dozen profiling items measures an expert coarsely, so its accuracy is shrunk
toward the expert's overall accuracy; unless given, the number of clusters and the prior strength
are chosen in `fit` by cross-validation on the profiling items (`coe.routers.selection`). One
cluster is the overall ranking, so a pool whose clusters carry no signal routes like best-k overall.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, Self

import numpy as np

from coe.embed import Encoder
from coe.outcomes import Outcomes
from coe.routers.base import Pick, Router, penalized, top_k
from coe.routers.selection import FoldEstimates, choose_by_cross_validation, shrunk_accuracy
from coe.schema import Query

CLUSTERS_GRID = (1, 2, 4, 8, 16, 32, 64)
PRIOR_GRID = (100.0, 30.0, 10.0, 3.0, 1.0)
"""Pseudo-items at the overall accuracy added to each cluster, strongest (smoothest) first."""


def fit_kmeans(vectors: np.ndarray, n_clusters: int, seed: int) -> Any:
    """Seeded k-means (scikit-learn, one k-means++ start) over unit vectors; at most one cluster per item."""
    from sklearn.cluster import KMeans

    model = KMeans(n_clusters=min(n_clusters, len(vectors)), n_init=1, random_state=seed)
    return model.fit(vectors)


def nearest_clusters(centroids: np.ndarray, vectors: np.ndarray, n_nearest: int) -> np.ndarray:
    """(n_vectors, n_nearest) cluster indices, nearest centroid (Euclidean) first."""
    distances = (
        np.sum(vectors**2, axis=1, keepdims=True) - 2 * vectors @ centroids.T + np.sum(centroids**2, axis=1)[None, :]
    )
    return np.argsort(distances, axis=1, kind="stable")[:, : min(n_nearest, len(centroids))]


def cluster_counts(labels: np.ndarray, correct: np.ndarray, n_clusters: int) -> tuple[np.ndarray, np.ndarray]:
    """Per cluster and expert: right answers and measured outcomes, each (n_clusters, n_experts)."""
    known = ~np.isnan(correct)
    hits = np.zeros((n_clusters, correct.shape[1]))
    counts = np.zeros_like(hits)
    np.add.at(hits, labels, np.where(known, correct, 0.0))
    np.add.at(counts, labels, known.astype(float))
    return hits, counts


def pooled_accuracy(
    hits: np.ndarray, counts: np.ndarray, chosen: np.ndarray, prior: np.ndarray, strength: float
) -> np.ndarray:
    """(n_queries, n_experts): accuracy over each query's chosen clusters pooled, shrunk to `prior`."""
    return shrunk_accuracy(hits[chosen].sum(axis=1), counts[chosen].sum(axis=1), prior, strength)


class ClusterRouter(Router):
    """Top-k experts of the query's nearest cluster(s) by shrunk accuracy − λ·cost."""

    name = "cluster"

    def __init__(
        self,
        *,
        k: int = 3,
        n_clusters: int | None = None,
        n_nearest: int = 1,
        prior_strength: float | None = None,
        cost_weight: float = 0.0,
        encoder: Encoder | None = None,
        random_state: int = 0,
    ) -> None:
        self.k = k
        self.n_clusters = n_clusters
        self.n_nearest = n_nearest
        self.prior_strength = prior_strength
        self.cost_weight = cost_weight
        self.encoder = encoder
        self.random_state = random_state

    def fit(self, outcomes: Outcomes) -> Self:
        self.experts_ = outcomes.expert_ids
        self.prior_ = outcomes.accuracy()
        self.costs_ = outcomes.costs()
        self.centroids_: np.ndarray | None = None
        self.n_clusters_, self.prior_strength_ = 1, np.inf
        self.measured_ = not outcomes.is_empty
        if outcomes.is_empty:
            return self
        self.encoder_ = self.encoder if self.encoder is not None else Encoder()
        vectors = self.encoder_.encode([item.text for item in outcomes.items])
        grid = self._grid(len(vectors))
        self.n_clusters_, self.prior_strength_ = choose_by_cross_validation(
            outcomes.correct, self._fold_estimates(vectors, outcomes, grid), grid, k=self.k, seed=self.random_state
        )
        if self.n_clusters_ > 1:
            model = fit_kmeans(vectors, self.n_clusters_, self.random_state)
            self.centroids_ = model.cluster_centers_
            self.hits_, self.counts_ = cluster_counts(model.labels_, outcomes.correct, len(model.cluster_centers_))
        return self

    def _grid(self, n_items: int) -> list[tuple[int, float]]:
        """(n_clusters, prior strength) candidates, smoothest first; one cluster needs no prior."""
        sizes = [self.n_clusters] if self.n_clusters else [c for c in CLUSTERS_GRID if c <= n_items]
        strengths = [self.prior_strength] if self.prior_strength is not None else list(PRIOR_GRID)
        return list(
            dict.fromkeys(
                (size, strength if size > 1 else np.inf) for size, strength in itertools.product(sizes, strengths)
            )
        )

    def _fold_estimates(
        self, vectors: np.ndarray, outcomes: Outcomes, grid: Sequence[tuple[int, float]]
    ) -> FoldEstimates:
        """Cross-validation's view of the grid: one k-means per fold and cluster count."""

        def estimates(train: np.ndarray, held: np.ndarray) -> list[np.ndarray]:
            prior = outcomes.subset(train).accuracy()
            fitted = {
                size: fit_kmeans(vectors[train], size, self.random_state) for size in {s for s, _ in grid if s > 1}
            }
            rows = []
            for size, strength in grid:
                if size == 1:
                    rows.append(np.tile(prior, (len(held), 1)))
                    continue
                model = fitted[size]
                hits, counts = cluster_counts(model.labels_, outcomes.correct[train], len(model.cluster_centers_))
                chosen = nearest_clusters(model.cluster_centers_, vectors[held], self.n_nearest)
                rows.append(pooled_accuracy(hits, counts, chosen, prior, strength))
            return rows

        return estimates

    def nearest(self, queries: Sequence[Query]) -> np.ndarray | None:
        """(n_queries, n_nearest) each query's nearest clusters; None when there is one cluster."""
        if self.centroids_ is None:
            return None
        vectors = self.encoder_.encode([query.text for query in queries])
        return nearest_clusters(self.centroids_, vectors, self.n_nearest)

    def scores(self, queries: Sequence[Query]) -> np.ndarray:
        """(n_queries, n_experts) shrunk accuracy of every expert in each query's nearest cluster(s)."""
        return self._accuracy(self.nearest(queries), len(queries))

    def _accuracy(self, chosen: np.ndarray | None, n_queries: int) -> np.ndarray:
        if chosen is None:
            return np.tile(self.prior_, (n_queries, 1))
        return pooled_accuracy(self.hits_, self.counts_, chosen, self.prior_, self.prior_strength_)

    def _route(self, queries: list[Query]) -> list[Pick]:
        if not queries:
            return []
        chosen = self.nearest(queries)
        accuracy = self._accuracy(chosen, len(queries))
        ranking = top_k(penalized(accuracy, self.costs_, self.cost_weight), len(self.experts_))
        k = min(self.k, len(self.experts_))
        picks = []
        for i, (row, order) in enumerate(zip(accuracy, ranking, strict=True)):
            estimates = ", ".join(f"{self.experts_[e]} {row[e]:.2f}" for e in order[:k])
            if chosen is not None:
                clusters = "+".join(str(c) for c in chosen[i])
                where = f"cluster {clusters} of {self.n_clusters_} (prior strength {self.prior_strength_:g})"
            elif self.measured_:
                where = "all profiling items (cross-validation found clusters no better)"
            else:
                where = "declared priors (no profiling items)"
            picks.append(Pick.ranked(order, row, k, f"accuracy in {where}: {estimates}"))
        return picks
