"""Failures handled in the core: the route's next-ranked expert replaces a failed one, recorded on the
Answer; the failed call is never made again (retries are the backend's, one layer). Replay experts that
lack items (one lacking 15% of MMLU-Pro) and a real HTTP upstream that fails."""

import gzip
import json
from pathlib import Path

import pytest

from coe.backends import LitellmBackend, ReplayBackend
from coe.composer import Composer
from coe.datasets import load_mmlu_pro
from coe.outcomes import Outcomes
from coe.recovery import Recovery, restricted
from coe.registry import Registry
from coe.routers import BestSingleRouter, KnnRouter
from coe.schema import ExpertSpec, Query
from coe.types import Failure
from tests.conftest import DATA_DIR
from tests.recorded import flaky_pool, lacks_record
from tests.upstream import Upstream, litellm_expert, serve_upstream

QUERIES = [Query(id=str(i), text=f"question {i}", choices=("yes", "no", "maybe")) for i in range(1, 7)]


def _replay(tmp_path: Path, expert_id: str, prior: float, answers: dict[str, str]) -> ExpertSpec:
    path = tmp_path / f"{expert_id}.jsonl.gz"
    with gzip.open(path, "wt") as out:
        for item, letter in answers.items():
            out.write(json.dumps({"question_id": int(item), "response": f"The answer is ({letter})."}) + "\n")
    return ExpertSpec(
        id=expert_id, base=expert_id, backend={"kind": "replay", "responses": path}, skills={"overall": prior}
    )


@pytest.fixture
def pool(tmp_path: Path) -> Registry:
    every = {q.id: "A" for q in QUERIES}
    return Registry(
        [
            _replay(tmp_path, "gappy", 0.9, {i: "B" for i in every if i not in ("2", "5")}),
            _replay(tmp_path, "full", 0.8, every),
            _replay(tmp_path, "third", 0.5, {i: "C" for i in every}),
        ],
        source="test",
    )


def _composer(pool: Registry, router, **options) -> Composer:
    backends = {"replay": ReplayBackend(), "litellm": LitellmBackend()}
    return Composer(pool, router=router.fit(Outcomes.from_priors(pool.experts)), backends=backends, **options)


def test_routes_rank_every_expert_beyond_the_picks(pool: Registry) -> None:
    route = KnnRouter(k=2).fit(Outcomes.from_priors(pool.experts)).route(QUERIES[:1])[0]
    assert route.expert_ids == ["gappy", "full"]
    assert [c.expert for c in route.fallbacks] == ["third"] and route.fallbacks[0].score == 0.5


def test_a_missing_record_is_replaced_by_the_next_ranked_expert(pool: Registry) -> None:
    answers = _composer(pool, BestSingleRouter()).ask_batch(QUERIES)
    for answer in answers:
        if answer.query_id in ("2", "5"):
            (fallback,) = answer.fallbacks
            assert (fallback.expert, fallback.replacement, fallback.error.kind) == ("gappy", "full", "no_record")
            assert answer.experts == ("gappy", "full")
            assert answer.expert_answers[0].error is not None and answer.expert_answers[1].error is None
            assert answer.choice == "A"
        else:
            assert answer.fallbacks == () and answer.experts == ("gappy",) and answer.choice == "B"


def test_without_replacement_a_failed_expert_abstains_as_before(pool: Registry) -> None:
    kept = _composer(pool, KnnRouter(k=2), recovery=Recovery(replace=False)).ask_batch(QUERIES)
    replaced = _composer(pool, KnnRouter(k=2)).ask_batch(QUERIES)
    for plain, recovered in zip(kept, replaced, strict=True):
        assert plain.fallbacks == ()
        assert plain.experts == ("gappy", "full")
        if plain.query_id in ("2", "5"):
            assert recovered.experts == ("gappy", "third", "full")  # the replacement takes the failed one's place
            assert recovered.votes == {"A": 1.0, "C": 1.0} and plain.votes == {"A": 1.0}
        else:
            assert recovered.model_dump(exclude={"timings"}) == plain.model_dump(exclude={"timings"})


def test_the_weighted_vote_weighs_a_replacement_by_its_route_score(pool: Registry) -> None:
    from coe.aggregate import WeightedVote

    answer = _composer(pool, KnnRouter(k=2), aggregator=WeightedVote()).ask(QUERIES[1])
    assert answer.votes == pytest.approx({"A": 0.8, "C": 0.5})


def test_avoided_experts_are_replaced_without_being_called(pool: Registry) -> None:
    cooling = Failure("cooling down after failures", kind="unavailable", expert="gappy")
    answer = _composer(pool, BestSingleRouter()).run(QUERIES[:1], avoid={"gappy": cooling}).answers[0]
    assert answer.experts == ("full",)
    assert [(f.expert, f.replacement, f.error.kind) for f in answer.fallbacks] == [("gappy", "full", "unavailable")]


def test_a_restriction_narrows_the_route_to_its_best_ranked_allowed_experts(pool: Registry) -> None:
    route = KnnRouter(k=2).fit(Outcomes.from_priors(pool.experts)).route(QUERIES[:1])[0]
    narrowed = restricted(route, {"third", "full"})
    assert narrowed.expert_ids == ["full", "third"] and narrowed.fallbacks == ()
    answer = _composer(pool, KnnRouter(k=2)).run(QUERIES[:1], experts={"third"}).answers[0]
    assert answer.experts == ("third",) and answer.fallbacks == () and "restricted to 1" in answer.route.reason


def test_nobody_left_to_replace_is_recorded(pool: Registry) -> None:
    answer = _composer(pool, BestSingleRouter()).run(QUERIES[1:2], experts={"gappy"}).answers[0]
    assert [(f.expert, f.replacement) for f in answer.fallbacks] == [("gappy", None)]
    assert answer.choice is None and answer.expert_answers[0].error is not None


@pytest.fixture(scope="module")
def upstream() -> Upstream:
    with serve_upstream() as server:
        yield server


def test_a_failed_call_is_never_made_again_by_the_composer(upstream: Upstream) -> None:
    """litellm with `num_retries: 0` against a server that fails each prompt's first call: the Composer
    does not add a retry layer of its own; the next-ranked expert answers instead."""
    experts = [litellm_expert(upstream, "once", num_retries=0), litellm_expert(upstream, "ok")]
    pool = Registry(
        [ExpertSpec.model_validate({**e, "skills": {"overall": p}}) for e, p in zip(experts, (0.9, 0.1), strict=True)],
        source="test",
    )
    before = upstream.calls["once"]
    answer = _composer(pool, BestSingleRouter()).ask(Query(id="r1", text="do not retry me", choices=("a", "b")))
    assert upstream.calls["once"] - before == 1
    assert [(f.expert, f.replacement, f.error.kind) for f in answer.fallbacks] == [("once", "ok", "server")]
    assert answer.choice == "B" and answer.experts == ("once", "ok")


def test_a_backend_that_retries_itself_is_not_retried_again_but_replaced(upstream: Upstream) -> None:
    experts = [litellm_expert(upstream, "down", num_retries=1), litellm_expert(upstream, "ok")]
    pool = Registry(
        [ExpertSpec.model_validate({**e, "skills": {"overall": p}}) for e, p in zip(experts, (0.9, 0.1), strict=True)],
        source="test",
    )
    composer = _composer(pool, BestSingleRouter())
    before = upstream.calls["down"]
    answer = composer.ask(Query(id="d1", text="anyone there?", choices=("a", "b")))
    assert upstream.calls["down"] - before == 2  # the backend's call and its one retry; no second layer
    (fallback,) = answer.fallbacks
    assert (fallback.expert, fallback.replacement, fallback.error.kind, fallback.error.retryable) == (
        "down",
        "ok",
        "server",
        True,
    )
    assert answer.choice == "B"


def test_a_recorded_expert_lacking_15_percent_of_the_items_is_replaced_by_the_next_ranked(tmp_path: Path) -> None:
    """The strongest recorded MMLU-Pro expert with 15% of its answers gone, ranked first: without
    fallback those questions go unanswered; with it the next-ranked expert answers each of them, exactly
    as it answers alone, and every other answer is unchanged."""
    flaky, steady = flaky_pool(tmp_path).experts
    pool = Registry(
        [flaky.model_copy(update={"skills": {"overall": 0.9}}), steady.model_copy(update={"skills": {"overall": 0.5}})],
        source="test",
    )
    questions = load_mmlu_pro("test", DATA_DIR)[:400]
    kept = _composer(pool, BestSingleRouter(), recovery=Recovery(replace=False)).ask_batch(questions)
    replaced = _composer(pool, BestSingleRouter()).ask_batch(questions)
    alone = _composer(pool, BestSingleRouter()).run(questions, experts={"steady"}).answers
    gaps = {a.query_id for a in kept if a.expert_answers[0].error is not None}
    assert {q.id for q in questions if lacks_record(q.id)} <= gaps  # and the few the recording lacked already
    assert 0.10 < len(gaps) / len(questions) < 0.20
    assert all(a.choice is None and a.fallbacks == () for a in kept if a.query_id in gaps)
    for plain, recovered, other in zip(kept, replaced, alone, strict=True):
        assert any(e.error is None for e in recovered.expert_answers)  # no question left unanswered
        if plain.query_id in gaps:
            assert [(f.expert, f.replacement, f.error.kind) for f in recovered.fallbacks] == [
                ("flaky", "steady", "no_record")
            ]
            assert recovered.choice == other.choice and recovered.correct == other.correct
        else:
            assert recovered.model_dump(exclude={"timings"}) == plain.model_dump(exclude={"timings"})
    recovered_right = sum(bool(a.correct) for a in replaced) - sum(bool(a.correct) for a in kept)
    assert recovered_right == sum(bool(a.correct) for a in alone if a.query_id in gaps) > 0
