"""The knn router: neighbour accuracy with the real MiniLM encoder, and how much it trusts neighbours."""

import numpy as np
import pytest

from coe.embed import Encoder
from coe.outcomes import Outcomes
from coe.routers import KnnRouter
from coe.routers.knn import neighbour_accuracy
from coe.routers.selection import vote_accuracy
from coe.schema import Query
from tests.routers.synthetic import EXPERTS, NEW_QUERIES, signal_free_outcomes, specialist_outcomes, topical_items


def test_each_topic_goes_to_the_expert_who_is_right_there(minilm: Encoder) -> None:
    router = KnnRouter(k=1, encoder=minilm).fit(specialist_outcomes(8))
    assert np.isfinite(router.prior_strength_)  # cross-validation found the neighbours worth trusting
    assert [route.expert_ids for route in router.route(NEW_QUERIES)] == [["alpha"], ["beta"], ["gamma"]]
    assert "nearest profiled items" in router.route(NEW_QUERIES)[0].reason


def test_neighbours_without_signal_leave_the_overall_best_experts(minilm: Encoder) -> None:
    outcomes = signal_free_outcomes(10)
    router = KnnRouter(k=2, encoder=minilm).fit(outcomes)
    assert router.prior_strength_ == np.inf
    routes = router.route(outcomes.items[:5])
    assert {tuple(route.expert_ids) for route in routes} == {("beta", "gamma")}
    encoded = minilm.n_encoded
    unseen = [Query(id="unseen", text="What does a router do with a question it has never embedded?")]
    assert router.route(unseen)[0].expert_ids == ["beta", "gamma"]
    assert minilm.n_encoded == encoded  # the overall accuracy is every query's estimate: nothing to embed


def test_fixed_hyperparameters_skip_cross_validation(minilm: Encoder) -> None:
    items = topical_items(4)
    router = KnnRouter(n_neighbors=3, temperature=0.1, prior_strength=2.0, encoder=minilm)
    router.fit(Outcomes(EXPERTS, tuple(items), np.ones((len(items), 3))))
    assert (router.n_neighbors_, router.temperature_, router.prior_strength_) == (3, 0.1, 2.0)


def test_cost_weight_trades_accuracy_for_price(minilm: Encoder) -> None:
    items = topical_items(4)
    outcomes = Outcomes(EXPERTS, tuple(items), np.tile([0.0, 1.0, 1.0], (len(items), 1)))
    assert KnnRouter(k=1, encoder=minilm).fit(outcomes).route(items[:1])[0].expert_ids == ["beta"]
    cheap = KnnRouter(k=1, cost_weight=2.0, encoder=minilm).fit(outcomes)
    assert cheap.route(items[:1])[0].expert_ids == ["alpha"]


def test_without_profiling_items_the_declared_priors_rank_experts() -> None:
    router = KnnRouter(k=2).fit(Outcomes.from_priors(EXPERTS))
    route = router.route([Query(id="q", text="anything")])[0]
    assert route.expert_ids == ["beta", "gamma"]
    assert "declared priors" in route.reason


def test_neighbour_accuracy_shrinks_few_neighbours_toward_the_prior() -> None:
    similarities = np.array([[0.9, 0.8]])
    neighbours = np.array([[0, 1]])
    correct = np.array([[1.0, 0.0], [1.0, np.nan]])
    prior = np.array([0.5, 0.5])
    estimate = neighbour_accuracy(similarities, neighbours, correct, prior, temperature=1e6, prior_strength=2.0)
    assert estimate[0].tolist() == pytest.approx([(2 + 1) / 4, (0 + 1) / 3])
    alone = neighbour_accuracy(similarities, neighbours, correct, prior, temperature=1e6, prior_strength=np.inf)
    assert alone[0].tolist() == [0.5, 0.5]


def test_vote_accuracy_needs_the_right_letter_to_outweigh_every_wrong_voter() -> None:
    estimates = np.array([[0.9, 0.6, 0.5], [0.9, 0.6, 0.5], [0.9, 0.6, 0.5]])
    correct = np.array([[0, 1, 1], [1, 0, 0], [0, 1, 0]], dtype=float)
    # two right voters beat one; a lone right voter wins only as the heaviest
    assert vote_accuracy(estimates, correct, k=3) == pytest.approx(2 / 3)
