"""Aggregators: votes with deterministic tie-breaks, and LLM synthesis on a real embedded model."""

from pathlib import Path

import pytest

from coe.aggregate import LlmSynthesis, MajorityVote, WeightedVote, make_aggregator
from coe.backends.llamacpp import LlamaCppBackend
from coe.backends.replay import ReplayBackend
from coe.datasets import load_mmlu_pro
from coe.errors import ConfigError, UnknownNameError
from coe.evals.probe import build_probe_items, run_probe
from coe.profile import profile
from coe.registry import Registry
from coe.scheduler import Scheduler
from coe.schema import ExpertAnswer, ExpertChoice, Query, Route
from coe.store import Store, latest_aggregator_choice
from coe.types import Failure, GenerationParams
from tests.conftest import DATA_DIR, REPO

QUERY = Query(id="q", text="2 + 2 = ?", choices=("3", "4", "5", "22"), gold="B")


def route(*scores: tuple[str, float]) -> Route:
    return Route(
        query_id="q", experts=tuple(ExpertChoice(expert=e, score=s) for e, s in scores), reason="t", router="t"
    )


TIMEOUT = Failure("timed out", kind="timeout", retryable=True)


def answer(expert: str, choice: str | None, error: Failure | None = None) -> ExpertAnswer:
    return ExpertAnswer(
        expert=expert, text=f"the answer is ({choice})" if choice else "no idea", choice=choice, error=error
    )


def test_majority_counts_votes_and_ignores_failed_experts() -> None:
    answers = [
        answer("a", "B"),
        answer("b", "C"),
        answer("c", "B"),
        answer("d", "C", error=TIMEOUT),
    ]
    verdict = MajorityVote().fuse(QUERY, route(("a", 0.1), ("b", 0.9), ("c", 0.1), ("d", 0.9)), answers)
    assert verdict.choice == "B" and verdict.votes == {"B": 2.0, "C": 1.0}
    assert verdict.text == "the answer is (B)"


def test_majority_ties_go_to_the_higher_router_score_then_the_first_ranked() -> None:
    answers = [answer("a", "B"), answer("b", "C")]
    assert MajorityVote().fuse(QUERY, route(("a", 0.2), ("b", 0.7)), answers).choice == "C"
    assert MajorityVote().fuse(QUERY, route(("a", 0.5), ("b", 0.5)), answers).choice == "B"
    assert MajorityVote().fuse(QUERY, route(("b", 0.5), ("a", 0.5)), answers).choice == "C"


def test_weighted_vote_lets_a_trusted_expert_outvote_two() -> None:
    answers = [answer("a", "B"), answer("b", "C"), answer("c", "C")]
    scores = route(("a", 0.9), ("b", 0.2), ("c", 0.3))
    assert MajorityVote().fuse(QUERY, scores, answers).choice == "C"
    weighted = WeightedVote().fuse(QUERY, scores, answers)
    assert weighted.choice == "B" and weighted.votes == pytest.approx({"B": 0.9, "C": 0.5})


def test_weighted_vote_counts_a_guessed_letter_for_little() -> None:
    stated = answer("a", "B")
    guesses = [ExpertAnswer(expert=e, text="B or C... maybe C", choice="C", guessed=True) for e in ("b", "c")]
    scores = route(("a", 0.5), ("b", 0.5), ("c", 0.5))
    assert MajorityVote().fuse(QUERY, scores, [stated, *guesses]).choice == "C"
    weighted = WeightedVote().fuse(QUERY, scores, [stated, *guesses])
    assert weighted.choice == "B" and weighted.votes == pytest.approx({"B": 0.5, "C": 0.1})
    assert WeightedVote(guess_weight=1.0).fuse(QUERY, scores, [stated, *guesses]).choice == "C"


def test_no_letter_and_open_questions_take_the_top_ranked_answer() -> None:
    verdict = MajorityVote().fuse(QUERY, route(("a", 0.9), ("b", 0.1)), [answer("b", None), answer("a", None)])
    assert verdict.choice is None and verdict.text == "no idea"
    assert MajorityVote().fuse(QUERY, route(), []).text == ""


def test_make_aggregator_names_what_is_missing() -> None:
    assert make_aggregator("majority").name == "majority"
    with pytest.raises(UnknownNameError, match="unknown aggregator 'mean'; known: llm, majority, stacked, weighted"):
        make_aggregator("mean")
    with pytest.raises(ConfigError, match="coe aggregators probe"):
        make_aggregator("llm")
    with pytest.raises(ConfigError, match="composition builder"):
        make_aggregator("stacked")


def test_llm_synthesis_calls_the_model_only_when_experts_disagree(
    embedded_backend: LlamaCppBackend, embedded_pool: Registry
) -> None:
    scheduler = Scheduler({"embedded": embedded_backend})
    synthesis = LlmSynthesis(embedded_pool["smollm2-135m"], scheduler, GenerationParams(max_tokens=48))
    agree = [answer("a", "B"), answer("b", "B")]
    split = [
        ExpertAnswer(expert="a", text="<think>hmm, 5?</think>4 is right, the answer is (B)", choice="B"),
        answer("b", "C"),
    ]
    prompt = synthesis.prompt(QUERY, split)
    assert "hmm, 5?" not in prompt and "Response 2:\nthe answer is (C)" in prompt and "2 + 2 = ?" in prompt
    routes = [route(("a", 0.5), ("b", 0.5))] * 2
    unanimous, mixed = synthesis.fuse_batch([QUERY, QUERY], routes, [agree, split])
    assert unanimous.choice == "B" and unanimous.text == "the answer is (B)"
    assert mixed.votes == {"B": 1.0, "C": 1.0}
    assert mixed.text not in ("the answer is (C)", split[0].text) or mixed.choice is not None
    again = synthesis.fuse(QUERY, routes[0], split)
    assert again == mixed  # greedy and cached by prompt: the same synthesis


def test_probe_items_hold_one_correct_and_up_to_two_wrong_answers() -> None:
    items = [QUERY, QUERY.model_copy(update={"id": "q2"})]
    texts = {
        ("a", "q"): "the answer is (B)",
        ("b", "q"): "the answer is (C)",
        ("c", "q"): "the answer is (D)",
        ("d", "q"): "the answer is (A)",
        ("a", "q2"): "the answer is (B)",
        ("b", "q2"): "the answer is (B)",
    }
    built = build_probe_items(items, texts, ["a", "b", "c", "d"], n_items=5, seed=0)
    assert [p.query.id for p in built] == ["q"]  # q2 has no wrong answer
    letters = sorted(a.choice for a in built[0].answers)
    assert letters.count("B") == 1 and len(letters) == 3


def test_probe_chooses_and_stores_an_aggregator(tmp_path: Path, embedded_backend: LlamaCppBackend) -> None:
    store = Store(f"sqlite:///{tmp_path / 'coe.db'}")
    pool = Registry.from_file(REPO / "registry" / "replay-mmlu-pro-ref8.yaml", DATA_DIR)
    items = load_mmlu_pro("test", DATA_DIR)[:40]
    scheduler = Scheduler({"replay": ReplayBackend(), "embedded": embedded_backend})
    params = GenerationParams(max_tokens=24)
    measured = profile(store, pool, bench="mmlu-pro", split="first-40", items=items, scheduler=scheduler, params=params)
    candidates = [Registry.from_file(REPO / "registry" / "embedded.yaml")[e] for e in ("smollm2-135m", "gemma3-270m")]
    result = run_probe(
        store,
        pool,
        candidates,
        bench="mmlu-pro",
        profile_id=measured.record.id,
        items=items,
        scheduler=scheduler,
        params=params,
        n_items=3,
    )
    assert result.n_items == 3 and set(result.scores) == {"smollm2-135m", "gemma3-270m"}
    assert all(0.0 <= s <= 1.0 for s in result.scores.values())
    stored = latest_aggregator_choice(store, pool=pool.source, bench="mmlu-pro")
    assert stored is not None and stored.expert_id == result.chosen and stored.scores == result.scores
