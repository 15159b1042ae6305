"""The K-shot router: a task's examples decide its experts, ties go to diversity then agreement; K examples
drawn seeded; a pool never profiled, with LoRA adapters on a shared base, measured on an examples file."""

from pathlib import Path

import numpy as np
import pytest

from coe.backends.llamacpp import LlamaCppBackend
from coe.compose import CompositionBuilder, CompositionSpec, KShotProfile, RouterSpec, parse_profile_source
from coe.datasets import load_examples
from coe.errors import DatasetError
from coe.outcomes import Outcomes
from coe.routers import KShotRouter
from coe.routers.kshot import draw_examples, rank_experts
from coe.scheduler import Scheduler
from coe.schema import ExpertSpec, Query
from coe.settings import Settings
from coe.types import LoadReport
from tests.conftest import REPO
from tests.routers.synthetic import EXPERTS, NEW_QUERIES, specialist_outcomes, topical_items


def test_each_task_goes_to_the_expert_right_on_its_examples() -> None:
    router = KShotRouter(k=1).fit(specialist_outcomes(5))
    assert [route.expert_ids for route in router.route(NEW_QUERIES)] == [["alpha"], ["beta"], ["gamma"]]
    assert "5 examples of task law" in router.route(NEW_QUERIES)[2].reason


def test_a_query_of_an_unseen_task_gets_the_best_on_all_examples() -> None:
    outcomes = specialist_outcomes(3)
    correct = outcomes.correct.copy()
    correct[:, 1] = 1  # beta right everywhere
    router = KShotRouter(k=2).fit(Outcomes(EXPERTS, outcomes.items, correct))
    route = router.route([Query(id="q", text="Who painted the Mona Lisa?", category="art")])[0]
    assert route.expert_ids[0] == "beta"
    assert "task art has none" in route.reason


def test_ties_go_to_diversity_then_to_agreement() -> None:
    # alpha 3/4; beta and gamma 2/4 each, but only gamma is right where alpha was wrong
    correct = np.array([[1, 1, 0], [1, 1, 0], [1, 0, 1], [0, 0, 1]], dtype=float)
    assert rank_experts(correct, np.nanmean(correct, axis=0)).tolist() == [0, 2, 1]
    # all tied at 2/4 with 2 new items each: the first pick agrees most with the others (not expert 0,
    # whose right answers no one shares); then diversity takes expert 0, which covers the rest
    correct = np.array([[0, 1, 1], [0, 1, 1], [1, 0, 0], [1, 0, 0]], dtype=float)
    assert rank_experts(correct, np.nanmean(correct, axis=0)).tolist() == [1, 0, 2]


def test_cost_weight_and_declared_priors() -> None:
    everyone = Outcomes(EXPERTS, tuple(topical_items(2)), np.ones((6, 3)))
    assert KShotRouter(k=1, cost_weight=0.1).fit(everyone).route(NEW_QUERIES[:1])[0].expert_ids == ["alpha"]
    route = KShotRouter(k=2).fit(Outcomes.from_priors(EXPERTS)).route(NEW_QUERIES[:1])[0]
    assert route.expert_ids == ["beta", "gamma"] and "declared priors" in route.reason


def test_draw_examples_is_seeded_per_category_and_keeps_the_given_order() -> None:
    items = topical_items(10)
    drawn = draw_examples(items, 3, seed=5)
    assert drawn == draw_examples(items, 3, seed=5) != draw_examples(items, 3, seed=6)
    assert sorted(q.category or "" for q in drawn) == ["biology"] * 3 + ["law"] * 3 + ["math"] * 3
    assert drawn == sorted(drawn, key=items.index)
    law = draw_examples(items, 4, seed=5, category="law")
    assert len(law) == 4 and {q.category for q in law} == {"law"}
    assert len(draw_examples(items, 50, seed=0, category="math")) == 10


def write_examples(path: Path) -> Path:
    lines = [
        '{"question": "What is 47 + 38?", "choices": ["75", "85", "95"], "answer": "B", "category": "arithmetic"}',
        '{"question": "What is 9 times 6?", "choices": ["54", "56", "63"], "answer": "A", "category": "arithmetic"}',
        '{"id": 7, "question": "What is 100 - 58?", "choices": ["32", "52", "42"], "answer": "C"}',
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_examples_file_loads_and_bad_lines_are_named(tmp_path: Path) -> None:
    examples = load_examples(write_examples(tmp_path / "k.jsonl"))
    assert [q.id for q in examples] == ["example-1", "example-2", "7"]
    assert examples[0].gold == "B" and examples[0].category == "arithmetic" and examples[2].category is None
    (tmp_path / "bad.jsonl").write_text('{"question": "2+2?", "choices": ["3", "4"], "answer": "E"}\n')
    with pytest.raises(DatasetError, match=r"bad.jsonl:1: answer 'E' is not an option letter \(AB\)"):
        load_examples(tmp_path / "bad.jsonl")
    assert parse_profile_source("kshot:k.jsonl") == KShotProfile(examples="k.jsonl")
    (tmp_path / "c.yaml").write_text("pool: embedded\nrouter: kshot\nprofile: {examples: k.jsonl}\n")
    profile = CompositionSpec.from_file(tmp_path / "c.yaml").profile
    assert profile == KShotProfile(examples=str((tmp_path / "k.jsonl").resolve()))
    with pytest.raises(ValueError, match="give either `examples`"):
        KShotProfile(examples="k.jsonl", kshot=5)


class LoadCounting(LlamaCppBackend):
    """The real llama.cpp backend, remembering what it loaded."""

    def __init__(self, cache_dir: Path) -> None:
        super().__init__(cache_dir=cache_dir)
        self.loaded: list[str] = []

    def load(self, expert: ExpertSpec, adapters=()) -> LoadReport:  # type: ignore[no-untyped-def]
        report = super().load(expert, adapters)
        if report.loaded:
            self.loaded.append(report.key)
        return report


@pytest.mark.slow
def test_a_never_profiled_lora_pool_is_run_on_the_examples_with_one_load_per_base(
    tmp_path: Path, weights_cache: Path
) -> None:
    settings = Settings(cache_dir=weights_cache, database_url=f"sqlite:///{tmp_path / 'coe.db'}")
    with LoadCounting(weights_cache) as backend:
        builder = CompositionBuilder(settings, scheduler=Scheduler({"embedded": backend}))
        spec = CompositionSpec(
            pool=str(REPO / "registry" / "embedded-lora.yaml"),
            router=RouterSpec(name="kshot"),
            profile=KShotProfile(examples=str(write_examples(tmp_path / "k.jsonl"))),
            k=2,
            generation={"max_tokens": 12},
        )
        composer = builder.compose(spec)
        # five experts (SmolLM2, a prompt variant, two LoRA adapters on it, Gemma 3): two bases, two loads
        assert len(backend.loaded) == 2 == len(set(backend.loaded))
        route = composer.router.route([Query(id="q", text="What is 12 + 30?", category="arithmetic")])[0]
        assert len(route.experts) == 2 and "K-shot accuracy on 2 examples of task arithmetic" in route.reason
