"""The cluster router (Avengers): k-means over real MiniLM embeddings, per-cluster accuracy, and how many
clusters cross-validation trusts."""

import numpy as np
import pytest

from coe.embed import Encoder
from coe.outcomes import Outcomes
from coe.routers import ClusterRouter
from coe.routers.cluster import cluster_counts, nearest_clusters, pooled_accuracy
from coe.schema import Query
from tests.routers.synthetic import EXPERTS, NEW_QUERIES, signal_free_outcomes, specialist_outcomes


def test_each_topic_goes_to_the_expert_who_is_right_there(minilm: Encoder) -> None:
    router = ClusterRouter(k=1, encoder=minilm).fit(specialist_outcomes(8))
    assert router.n_clusters_ > 1  # cross-validation found the clusters worth trusting
    assert [route.expert_ids for route in router.route(NEW_QUERIES)] == [["alpha"], ["beta"], ["gamma"]]
    assert "cluster" in router.route(NEW_QUERIES)[0].reason


def test_clusters_without_signal_leave_the_overall_best_experts(minilm: Encoder) -> None:
    outcomes = signal_free_outcomes(10)
    router = ClusterRouter(k=2, encoder=minilm).fit(outcomes)
    assert (router.n_clusters_, router.prior_strength_) == (1, np.inf)
    routes = router.route(outcomes.items[:5])
    assert {tuple(route.expert_ids) for route in routes} == {("beta", "gamma")}
    assert "cross-validation found clusters no better" in routes[0].reason


def test_fixed_hyperparameters_skip_cross_validation_and_are_seeded(minilm: Encoder) -> None:
    outcomes = specialist_outcomes(6)
    router = ClusterRouter(n_clusters=3, prior_strength=2.0, encoder=minilm, random_state=4).fit(outcomes)
    assert (router.n_clusters_, router.prior_strength_) == (3, 2.0)
    again = ClusterRouter(n_clusters=3, prior_strength=2.0, encoder=minilm, random_state=4).fit(outcomes)
    assert np.array_equal(router.centroids_, again.centroids_)


def test_pooling_every_cluster_is_the_overall_accuracy_and_counts_skip_missing_outcomes() -> None:
    labels = np.array([0, 0, 1, 2])
    correct = np.array([[1.0, 0.0], [1.0, np.nan], [0.0, 1.0], [1.0, 1.0]])
    hits, counts = cluster_counts(labels, correct, 3)
    assert hits.tolist() == [[2, 0], [0, 1], [1, 1]] and counts.tolist() == [[2, 1], [1, 1], [1, 1]]
    every = np.array([[0, 1, 2]])
    assert pooled_accuracy(hits, counts, every, np.zeros(2), 0.0)[0].tolist() == pytest.approx([3 / 4, 2 / 3])
    # one pseudo-item at the prior per unit of strength
    assert pooled_accuracy(hits, counts, np.array([[1]]), np.array([0.5, 0.5]), 1.0)[0].tolist() == [0.25, 0.75]
    centroids = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    assert nearest_clusters(centroids, np.array([[0.9, 0.2]]), 2).tolist() == [[0, 1]]


def test_without_profiling_items_the_declared_priors_rank_experts() -> None:
    route = ClusterRouter(k=2).fit(Outcomes.from_priors(EXPERTS)).route([Query(id="q", text="anything")])[0]
    assert route.expert_ids == ["beta", "gamma"]
    assert "declared priors" in route.reason
