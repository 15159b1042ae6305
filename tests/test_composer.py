"""The Composer end to end on the real embedded pool: one code path for one and many questions."""

import json

import pytest

from coe import Composer, Query
from coe.aggregate import WeightedVote
from coe.backends.llamacpp import LlamaCppBackend
from coe.errors import NotFittedError
from coe.registry import Registry
from coe.routers import BestSingleRouter, RandomRouter
from coe.scheduler import Scheduler
from coe.types import GenerationParams

PARAMS = GenerationParams(max_tokens=48)
RED_PLANET = Query(
    id="mars", text="Which planet is known as the Red Planet?", choices=("Venus", "Mars", "Jupiter", "Saturn"), gold="B"
)


@pytest.fixture
def composer(embedded_pool: Registry, embedded_backend: LlamaCppBackend) -> Composer:
    return Composer(embedded_pool, backends={"embedded": embedded_backend}, params=PARAMS)


def test_ask_one_question_uses_every_expert_and_votes(composer: Composer) -> None:
    answer = composer.ask(RED_PLANET.text, choices=RED_PLANET.choices)
    assert answer.experts == ("smollm2-135m", "gemma3-270m")
    assert [a.expert for a in answer.expert_answers] == ["smollm2-135m", "gemma3-270m"]
    assert all(a.text and a.error is None and a.n_completion_tokens > 0 for a in answer.expert_answers)
    assert answer.route.router == "all" and "all 2 experts" in answer.route.reason
    assert answer.aggregator == "majority"
    letters = [a.choice for a in answer.expert_answers if a.choice]
    if letters:
        assert answer.choice in letters
        assert sum(answer.votes.values()) == len(letters)
    assert set(answer.timings) == {"route_s", "load_s", "generate_s", "fuse_s", "total_s"}
    payload = json.loads(answer.model_dump_json())
    for key in ("answer", "choice", "experts", "expert_answers", "route", "timings"):
        assert key in payload
    assert payload["route"]["reason"]


def test_ask_batch_is_ask_on_each(composer: Composer) -> None:
    queries = [RED_PLANET, Query(id="paris", text="What is the capital of France? Answer in one word.")]
    batch = composer.ask_batch(queries)
    one = composer.ask(RED_PLANET)
    assert [a.query_id for a in batch] == ["mars", "paris"]

    def content(answer):
        return [(a.expert, a.text, a.choice, a.n_completion_tokens) for a in answer.expert_answers]

    assert content(batch[0]) == content(one)
    assert batch[0].correct == one.correct == (one.choice == "B")
    assert batch[1].choice is None and batch[1].correct is None
    assert "Paris" in " ".join(a.text for a in batch[1].expert_answers)


def test_run_reports_loads_once_per_model(embedded_pool: Registry, weights_cache) -> None:
    with (
        LlamaCppBackend(cache_dir=weights_cache) as backend,
        Composer(embedded_pool, backends={"embedded": backend}, params=GenerationParams(max_tokens=4)) as composer,
    ):
        result = composer.run([RED_PLANET, RED_PLANET.model_copy(update={"id": "mars2"})])
    assert result.stats.n_loads == 2
    assert result.stats.n_requests == 4
    assert result.stats.requests_per_expert == {"smollm2-135m": 2, "gemma3-270m": 2}


def test_custom_router_and_aggregator(embedded_pool: Registry, embedded_backend: LlamaCppBackend) -> None:
    from coe.outcomes import Outcomes

    router = BestSingleRouter().fit(Outcomes.from_priors(embedded_pool.experts))
    composer = Composer(
        embedded_pool, router=router, aggregator=WeightedVote(), backends={"embedded": embedded_backend}, params=PARAMS
    )
    answer = composer.ask(RED_PLANET)
    assert answer.experts == ("smollm2-135m",)
    assert "declared prior" in answer.route.reason
    assert answer.aggregator == "weighted"


def test_unfitted_router_raises_a_clear_error(embedded_pool: Registry, embedded_backend: LlamaCppBackend) -> None:
    composer = Composer(embedded_pool, router=RandomRouter(k=1), backends={"embedded": embedded_backend})
    with pytest.raises(NotFittedError, match="router 'random' is not fitted; call `fit"):
        composer.ask("Hi")


def test_composer_accepts_a_list_of_experts_and_a_scheduler(
    embedded_pool: Registry, embedded_backend: LlamaCppBackend
) -> None:
    backends = {"embedded": embedded_backend}
    composer = Composer(
        [embedded_pool["smollm2-135m"]], backends=backends, scheduler=Scheduler(backends), params=PARAMS
    )
    assert composer.ask("Hi").experts == ("smollm2-135m",)
