"""The matrix-factorization router: the factorization itself on a known low-rank truth, and routing with
the real MiniLM encoder."""

import numpy as np

from coe.embed import Encoder
from coe.outcomes import Outcomes
from coe.routers import MfRouter
from coe.routers.mf import factorize, overall_log_odds
from coe.schema import Query
from tests.routers.synthetic import EXPERTS, NEW_QUERIES, signal_free_outcomes, specialist_outcomes


def test_factorization_recovers_a_low_rank_truth_from_sampled_outcomes() -> None:
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(600, 12))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    truth = 4.0 * vectors @ rng.normal(size=(12, 2)) @ rng.normal(size=(2, 5)) / np.sqrt(2)
    probability = 1 / (1 + np.exp(-truth))
    correct = (rng.random(probability.shape) < probability).astype(float)
    correct[rng.random(correct.shape) < 0.1] = np.nan  # some experts never ran on some items
    train, held = slice(0, 400), slice(400, 600)
    factors = factorize(vectors[train], correct[train], dim=4, penalty=0.01, seed=0)
    predicted = factors.probabilities(vectors[held])
    assert np.corrcoef(predicted.ravel(), probability[held].ravel())[0, 1] > 0.8
    same = factorize(vectors[train], correct[train], dim=4, penalty=0.01, seed=0)
    assert np.array_equal(same.probabilities(vectors[held]), predicted)


def test_an_infinite_penalty_keeps_each_experts_overall_accuracy() -> None:
    correct = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, np.nan], [1.0, 1.0]])
    factors = factorize(np.eye(4), correct, dim=3, penalty=np.inf, seed=0)
    # a half item added each way: (3 + .5) / (4 + 1) and (1 + .5) / (3 + 1)
    assert factors.probabilities(np.eye(4))[0].tolist() == [0.7, 0.375]
    assert overall_log_odds(correct).tolist() == [np.log(3.5 / 1.5), np.log(1.5 / 2.5)]


def test_each_topic_goes_to_the_expert_who_is_right_there(minilm: Encoder) -> None:
    router = MfRouter(k=1, encoder=minilm).fit(specialist_outcomes(8))
    assert np.isfinite(router.penalty_)  # cross-validation found the factors worth trusting
    assert [route.expert_ids for route in router.route(NEW_QUERIES)] == [["alpha"], ["beta"], ["gamma"]]
    assert "matrix factorization" in router.route(NEW_QUERIES)[0].reason


def test_factors_without_signal_leave_the_overall_best_experts(minilm: Encoder) -> None:
    outcomes = signal_free_outcomes(10)
    router = MfRouter(k=2, encoder=minilm).fit(outcomes)
    assert router.penalty_ == np.inf
    assert {tuple(route.expert_ids) for route in router.route(outcomes.items[:5])} == {("beta", "gamma")}
    encoded = minilm.n_encoded
    unseen = [Query(id="unseen", text="What does a router do with a question it has never embedded?")]
    factors = router.factors_
    assert factors is not None
    no_signal = factors.probabilities(np.zeros((1, factors.projection.shape[1])))
    np.testing.assert_array_equal(router.scores(unseen), no_signal)
    assert router.route(unseen)[0].expert_ids == ["beta", "gamma"] and minilm.n_encoded == encoded


def test_cost_weight_trades_predicted_correctness_for_price(minilm: Encoder) -> None:
    outcomes = specialist_outcomes(4)
    everyone_right = Outcomes(EXPERTS, outcomes.items, np.tile([0.0, 1.0, 1.0], (len(outcomes.items), 1)))
    assert MfRouter(k=1, penalty=np.inf, encoder=minilm).fit(everyone_right).route(NEW_QUERIES[:1])[0].expert_ids == [
        "beta"
    ]
    cheap = MfRouter(k=1, penalty=np.inf, cost_weight=2.0, encoder=minilm).fit(everyone_right)
    assert cheap.route(NEW_QUERIES[:1])[0].expert_ids == ["alpha"]


def test_without_profiling_items_the_declared_priors_rank_experts() -> None:
    route = MfRouter(k=2).fit(Outcomes.from_priors(EXPERTS)).route([Query(id="q", text="anything")])[0]
    assert route.expert_ids == ["beta", "gamma"]
    assert "declared priors" in route.reason
