"""The skill router (Symbolic-MoE): ±1 skill profiles, both global weightings, seeded recruiting."""

import numpy as np
import pytest

from coe.embed import Encoder
from coe.outcomes import Outcomes
from coe.routers import SkillRouter
from coe.routers.skill import global_strength, recruit_weights, skill_profile
from coe.schema import EmbeddedBackendSpec, ExpertSpec, Query
from coe.skills import EmbeddingAnnotator, bundled_taxonomy

EXPERTS = tuple(
    ExpertSpec(id=name, base=name, backend=EmbeddedBackendSpec(weights="smollm2-135m-instruct-q4_1"))
    for name in ("alpha", "beta", "gamma", "delta")
)
ITEMS = tuple(
    Query(id=f"i{i}", text=f"item {i}", skills=skills)
    for i, skills in enumerate(
        [("algebra",), ("algebra", "calculus"), ("genetics",), ("genetics",), ("contract law",), ("contract law",)]
    )
)
# alpha: algebra, and the strongest overall; beta: genetics; gamma: contract law; delta: always wrong
CORRECT = np.array(
    [[1, 0, 0, 0], [1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [1, 0, 1, 0]],
    dtype=float,
)


@pytest.fixture
def outcomes() -> Outcomes:
    return Outcomes(EXPERTS, ITEMS, CORRECT)


def test_profile_adds_one_when_right_and_takes_one_when_wrong() -> None:
    correct = np.array([[1.0, 0.0], [np.nan, 0.0]])
    names, profile, measured = skill_profile([("algebra", "algebra"), ("algebra",)], correct)
    assert names == ["algebra"]
    assert profile.tolist() == [[1.0, -2.0]]
    assert measured.tolist() == [[1.0, 2.0]]


def test_the_two_global_weightings() -> None:
    profile = np.array([[4.0, -2.0, 0.0]])
    softmax = global_strength(profile, n_occurrences=4, weighting="softmax", temperature=0.5)
    expected = np.exp(np.array([1.0, -0.5, 0.0]) / 0.5)
    np.testing.assert_allclose(softmax, expected / expected.sum())
    squared = global_strength(profile, n_occurrences=4, weighting="shift-square", temperature=0.5)
    np.testing.assert_allclose(squared, np.array([49.0, 1.0, 9.0]) / 59.0)  # (x − min + 1)²


def test_recruiting_keeps_positive_local_scores_and_shifts_when_none_is() -> None:
    weights = recruit_weights(np.array([[3.0, -1.0, 1.0], [-3.0, -1.0, -2.0]]), np.array([0.5, 0.25, 0.25]))
    np.testing.assert_allclose(weights[0], [1.5, 0.0, 0.25] / np.float64(1.75))
    np.testing.assert_allclose(weights[1], np.array([0.5, 0.75, 0.5]) / 1.75)


def test_a_query_is_recruited_by_its_skills(outcomes: Outcomes) -> None:
    router = SkillRouter(k=1).fit(outcomes)
    queries = [Query(id=f"q{i}", text="?", skills=("genetics",)) for i in range(20)]
    assert {route.expert_ids[0] for route in router.route(queries)} == {"beta"}
    law = router.route([Query(id="law", text="?", skills=("contract law",))])[0]
    assert law.expert_ids == ["gamma"]
    assert law.experts[0].score == pytest.approx((2 + 10 * 0.5) / (2 + 10))  # 2 of 2 on contract law
    assert "contract law" in law.reason


def test_draws_without_replacement_are_distinct_and_follow_the_weights(outcomes: Outcomes) -> None:
    router = SkillRouter(k=3).fit(outcomes)
    # calculus: alpha and gamma were right (+1 each), alpha is the stronger overall
    queries = [Query(id=f"q{i}", text="?", skills=("calculus",)) for i in range(200)]
    routes = router.route(queries)
    assert all(len(set(route.expert_ids)) == 3 for route in routes)
    first = [route.expert_ids[0] for route in routes]
    assert first.count("alpha") > first.count("gamma") > 0
    assert set(first) == {"alpha", "gamma"}


def test_draws_with_replacement_list_each_expert_once_with_its_draws(outcomes: Outcomes) -> None:
    router = SkillRouter(k=3, replace=True).fit(outcomes)
    routes = router.route([Query(id=f"q{i}", text="?", skills=("genetics",)) for i in range(10)])
    for route in routes:
        assert route.expert_ids == ["beta"]  # drawn three times: the only expert right on genetics
        # its genetics accuracy (2 of 2) shrunk toward its overall (2 of 6), once per draw
        assert route.experts[0].score == pytest.approx(3 * (2 + 10 * 2 / 6) / (2 + 10))


def test_pruning_drops_experts_rarely_recruited_on_the_profiling_items(outcomes: Outcomes) -> None:
    pruned = SkillRouter(k=2, prune_below=0.05).fit(outcomes)
    assert pruned.active_.tolist() == [True, True, True, False]
    queries = [Query(id=f"q{i}", text="?", skills=("nothing profiled",)) for i in range(50)]
    assert all("delta" not in route.expert_ids for route in pruned.route(queries))


def test_unannotated_items_and_queries_get_skills_from_the_annotator(minilm: Encoder) -> None:
    items = tuple(
        Query(id=f"i{i}", text=text)
        for i, text in enumerate(["Solve 2x + 3 = 9 for x.", "Factor x^2 - 5x + 6.", "What is a tort?"])
    )
    annotator = EmbeddingAnnotator(bundled_taxonomy("mmlu_pro"), minilm)
    correct = np.array([[1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0]], dtype=float)
    router = SkillRouter(k=1, annotator=annotator).fit(Outcomes(EXPERTS, items, correct))
    assert "algebra" in router.skill_row_
    route = router.route([Query(id="q", text="Solve 5x - 1 = 14 for x.")])[0]
    assert route.expert_ids == ["alpha"]
