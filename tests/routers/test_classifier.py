"""The classifier router (Composition of Experts): category prediction, budgeted table, fallback."""

import numpy as np
import pytest

from coe.embed import Encoder
from coe.errors import UnknownExpertError
from coe.outcomes import Outcomes
from coe.routers import ClassifierRouter
from coe.routers.classifier import budgeted_table
from coe.schema import EmbeddedBackendSpec, ExpertSpec, Query

EXPERTS = tuple(
    ExpertSpec(id=name, base=name, backend=EmbeddedBackendSpec(weights="smollm2-135m-instruct-q4_1"), params_b=size)
    for name, size in (("alpha", 1.0), ("beta", 70.0), ("gamma", 8.0))
)
TEXTS = {
    "math": ["Solve 3x + 5 = 11 for x.", "What is the derivative of x squared?", "Compute 17 times 23."],
    "biology": ["Which organelle makes ATP?", "What carries genetic information?", "How do enzymes work?"],
    "law": ["Is a verbal contract binding?", "What is a tort?", "Can a landlord evict without notice?"],
}
ITEMS = tuple(
    Query(id=f"{category}{i}", text=text, category=category)
    for category, texts in TEXTS.items()
    for i, text in enumerate(texts)
)
# alpha is right on math, gamma on law; beta (the largest) on everything but law: best overall
CORRECT = np.array([[1, 1, 0]] * 3 + [[0, 1, 0]] * 3 + [[0, 0, 1]] * 3, dtype=float)
QUERIES = [
    Query(id="m", text="Solve 2x - 4 = 10 for x."),
    Query(id="l", text="Is an oral agreement to sell land enforceable?"),
]


@pytest.fixture
def outcomes() -> Outcomes:
    return Outcomes(EXPERTS, ITEMS, CORRECT)


def test_a_query_goes_to_the_best_expert_of_its_predicted_category(minilm: Encoder, outcomes: Outcomes) -> None:
    router = ClassifierRouter(threshold=0.0, encoder=minilm).fit(outcomes)
    math, law = router.route(QUERIES)
    assert math.expert_ids == ["alpha"]  # ties with beta on math go to the first expert
    assert law.expert_ids == ["gamma"]
    assert law.reason.startswith("category law")


def test_an_uncertain_category_goes_to_the_generalist(minilm: Encoder, outcomes: Outcomes) -> None:
    unsure = ClassifierRouter(threshold=1.01, encoder=minilm).fit(outcomes)
    assert [route.expert_ids for route in unsure.route(QUERIES)] == [["beta"], ["beta"]]
    assert unsure.route(QUERIES)[0].reason.startswith("uncertain category")
    configured = ClassifierRouter(k=2, threshold=1.01, fallback="gamma", encoder=minilm).fit(outcomes)
    assert configured.route(QUERIES)[0].expert_ids == ["gamma", "beta"]


def test_an_unknown_fallback_names_the_known_experts(minilm: Encoder, outcomes: Outcomes) -> None:
    with pytest.raises(UnknownExpertError, match=r"unknown expert 'omega'.*known: alpha, beta, gamma"):
        ClassifierRouter(fallback="omega", encoder=minilm).fit(outcomes)


def test_a_size_budget_moves_categories_to_smaller_experts(minilm: Encoder, outcomes: Outcomes) -> None:
    free = ClassifierRouter(threshold=0.0, encoder=minilm).fit(outcomes)
    assert free.table_[free.categories_.index("biology")][0] == 1  # beta, 70B
    small = ClassifierRouter(threshold=0.0, budget=10.0, encoder=minilm).fit(outcomes)
    assert small.multiplier_ > 0
    chosen_sizes = [EXPERTS[row[0]].params_b or 0.0 for row in small.table_]
    assert np.mean(chosen_sizes) <= 10.0


def test_budgeted_table_keeps_the_best_table_that_fits() -> None:
    accuracy = np.array([[0.9, 0.8], [0.7, 0.2]])
    sizes = np.array([10.0, 1.0])
    shares = np.array([0.5, 0.5])
    table, multiplier = budgeted_table(accuracy, shares, sizes, k=1, budget=6.0)
    assert table[:, 0].tolist() == [1, 0]  # the cheap expert where it costs least accuracy
    assert multiplier > 0
    assert budgeted_table(accuracy, shares, sizes, k=1, budget=None)[0][:, 0].tolist() == [0, 0]
    assert budgeted_table(accuracy, shares, sizes, k=1, budget=0.5)[0][:, 0].tolist() == [1, 1]


def test_the_classifier_can_learn_from_another_labelled_set(minilm: Encoder, outcomes: Outcomes) -> None:
    unlabelled = Outcomes(EXPERTS, tuple(item.model_copy(update={"category": None}) for item in ITEMS), CORRECT)
    router = ClassifierRouter(threshold=0.0, encoder=minilm).fit(unlabelled, labelled=ITEMS)
    assert router.categories_ == ["biology", "law", "math"]
