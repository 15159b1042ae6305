"""One conformance suite for every router, in the manner of scikit-learn's estimator checks.

Routers that embed queries get the session's real MiniLM encoder (the skill router builds its default
embedding annotator on it), as `coe eval` passes its one encoder to every router."""

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from coe.embed import Encoder
from coe.errors import NotFittedError, UnknownNameError
from coe.outcomes import Outcomes
from coe.routers import ROUTERS, Router, make_router
from coe.schema import EmbeddedBackendSpec, ExpertSpec, Query

EXPERTS = tuple(
    ExpertSpec(
        id=name, base=name, backend=EmbeddedBackendSpec(weights="smollm2-135m-instruct-q4_1"), cost_per_mtok=cost
    )
    for name, cost in (("alpha", 0.0), ("beta", 1.0), ("gamma", 3.0))
)
QUERIES = tuple(
    Query(id=f"q{i}", text=text, choices=("yes", "no"), category=category, gold="A")
    for i, (text, category) in enumerate(
        [
            ("What is the derivative of x squared?", "math"),
            ("Solve 3x + 5 = 11 for x.", "math"),
            ("Which organelle makes ATP?", "biology"),
            ("What carries genetic information in cells?", "biology"),
            ("Is a verbal contract binding?", "law"),
            ("What is a tort?", "law"),
        ]
    )
)
# alpha is good at math, beta at biology, gamma at law; beta is best overall.
CORRECT = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 1, 1], [0, 1, 1], [0, 0, 1]], dtype=float)


@pytest.fixture
def outcomes() -> Outcomes:
    return Outcomes(EXPERTS, QUERIES, CORRECT)


@pytest.fixture(params=sorted(ROUTERS))
def router(request: pytest.FixtureRequest, minilm: Encoder) -> Router:
    return make_router(request.param, k=2, random_state=0, encoder=minilm)


def test_route_before_fit_raises(router: Router) -> None:
    with pytest.raises(NotFittedError, match=f"router '{router.name}' is not fitted"):
        router.route(QUERIES)


def test_fit_returns_self(router: Router, outcomes: Outcomes) -> None:
    assert router.fit(outcomes) is router


def test_one_route_per_query_with_known_experts(router: Router, outcomes: Outcomes) -> None:
    routes = router.fit(outcomes).route(QUERIES)
    assert [r.query_id for r in routes] == [q.id for q in QUERIES]
    known = {e.id for e in EXPERTS}
    for route in routes:
        assert route.router == router.name
        assert route.reason
        assert set(route.expert_ids) <= known
        assert len(set(route.expert_ids)) == len(route.expert_ids)
        if router.picks_k:
            assert len(route.experts) == 2
        else:
            assert 1 <= len(route.experts) <= len(EXPERTS)
        assert route.params == router.provenance()
        assert json.loads(route.model_dump_json())["params"] == route.params


def test_every_route_ranks_every_expert_once(router: Router, outcomes: Outcomes) -> None:
    """The picks, then the fallbacks (who replaces a picked expert that fails), cover the pool once."""
    for route in router.fit(outcomes).route(QUERIES):
        ranked = route.expert_ids + [choice.expert for choice in route.fallbacks]
        assert sorted(ranked) == sorted(e.id for e in EXPERTS)


def test_a_pool_with_no_priors_and_no_profile_is_routed(router: Router) -> None:
    """Experts that declare no skills and were never profiled (what `coe serve --profile priors` gives a
    pool without priors): every router still ranks every expert, instead of dividing by zero."""
    for route in router.fit(Outcomes.from_priors(EXPERTS)).route(QUERIES):
        ranked = route.expert_ids + [choice.expert for choice in route.fallbacks]
        assert sorted(ranked) == sorted(e.id for e in EXPERTS) and route.experts


def test_same_seed_same_routes(router: Router, outcomes: Outcomes) -> None:
    first = router.fit(outcomes).route(QUERIES)
    second = make_router(router.name, **router.get_params()).fit(outcomes).route(QUERIES)
    assert first == second


def test_route_of_a_query_does_not_depend_on_its_batch(router: Router, outcomes: Outcomes) -> None:
    router.fit(outcomes)
    assert router.route(QUERIES)[3] == router.route([QUERIES[3]])[0]


def test_refit_overwrites(router: Router, outcomes: Outcomes) -> None:
    router.fit(outcomes)
    flipped = Outcomes(EXPERTS, QUERIES, 1 - CORRECT)
    router.fit(flipped)
    fresh = make_router(router.name, **router.get_params()).fit(flipped)
    assert router.route(QUERIES) == fresh.route(QUERIES)


def test_get_params_round_trips(router: Router) -> None:
    params = router.get_params()
    assert make_router(router.name, **params).get_params() == params


def test_unknown_router_lists_the_known_ones() -> None:
    known = "all, best-single, classifier, cluster, knn, kshot, mf, oracle, random, skill"
    with pytest.raises(UnknownNameError, match=f"unknown router 'smart'; known: {known}"):
        make_router("smart")


def test_best_single_picks_the_most_accurate_and_cost_weight_trades_it_off(outcomes: Outcomes) -> None:
    assert make_router("best-single").fit(outcomes).route(QUERIES[:1])[0].expert_ids == ["beta"]
    cheap = make_router("best-single", cost_weight=0.5).fit(outcomes)
    assert cheap.route(QUERIES[:1])[0].expert_ids == ["alpha"]


def test_oracle_with_a_cost_weight_picks_the_cheapest_correct_expert(outcomes: Outcomes) -> None:
    # q1: alpha (free) and beta were both right; beta is more accurate, alpha cheaper.
    assert make_router("oracle").fit(outcomes).route(QUERIES[1:2])[0].expert_ids == ["beta"]
    assert make_router("oracle", cost_weight=1.0).fit(outcomes).route(QUERIES[1:2])[0].expert_ids == ["alpha"]


def test_oracle_picks_a_correct_expert_and_says_it_is_an_upper_bound(outcomes: Outcomes) -> None:
    routes = make_router("oracle").fit(outcomes).route(QUERIES)
    for route, row in zip(routes, CORRECT, strict=True):
        chosen = [e.id for e in EXPERTS].index(route.expert_ids[0])
        assert row[chosen] == 1
        assert route.reason.startswith("ORACLE (upper bound)")


def test_concurrent_routing_matches_sequential_routing(router: Router, outcomes: Outcomes) -> None:
    """The service routes from several threads at once: no shared state may be written by `route`."""
    router.fit(outcomes)
    batches = [
        [Query(id=f"t{t}q{i}", text=f"Thread {t} asks question {i}: what is {t} times {i}?") for i in range(6)]
        for t in range(8)
    ]
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(router.route, batches))
    assert concurrent == [router.route(batch) for batch in batches]
