"""The stacked aggregator on recorded pools where the right answer is known: it learns from profiling
items when to overrule agreeing weaker experts and what a guessed letter is worth, per expert."""

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coe.aggregate import MajorityVote, WeightedVote
from coe.composer import Composer
from coe.errors import ConfigError, NotFittedError
from coe.outcomes import Outcomes
from coe.routers import AllRouter, BestSingleRouter
from coe.schema import ExpertAnswer, Query
from coe.stacked import StackedVote, has_texts, longer_options, measure_reliability, numeric_ranks, text_signals
from tests import synthetic_pool
from tests.synthetic_pool import LETTERS, guessed, stated, wrong


def accuracy(composer: Composer, router, aggregators: dict, test: list[Query]) -> dict[str, float]:
    results = composer.compare(test, {"r": router}, aggregators)
    return {name: float(np.mean([a.correct for a in results["r", name].answers])) for name in aggregators}


def all_experts(
    tmp_path: Path, rules: dict[str, synthetic_pool.Rule], n_profile: int, seed: int, **options: Any
) -> tuple[Outcomes, AllRouter, Composer, list[Query]]:
    """A recorded pool of `rules` profiled on `n_profile` items (`options`: how `synthetic_pool.queries`
    writes them), the all-experts router fitted on them, its composer, and 300 other test items."""
    items = synthetic_pool.queries(n_profile, seed=seed, **options)
    test = synthetic_pool.queries(300, seed=seed + 1, **options)
    registry = synthetic_pool.pool(tmp_path, items + test, rules)
    runner = synthetic_pool.scheduler()
    outcomes = synthetic_pool.profiled(registry, items, runner)
    router = AllRouter().fit(outcomes)
    return outcomes, router, Composer(registry, router=router, backends=runner.backends, scheduler=runner), test


def test_stacked_overrules_two_weaker_experts_that_agree_on_wrong_letters(tmp_path: Path) -> None:
    """`strong` is right 80% of the time; `weak1` and `weak2` are both right half the time and always
    agree, so a vote follows them (50%) while the profiling items show `strong` should win."""
    shared: dict[str, str] = {}

    def weak(query: Query, rng: np.random.Generator) -> str:
        if query.id not in shared:
            shared[query.id] = query.gold if rng.random() < 0.5 else wrong(query, rng)
        return stated(shared[query.id])

    def strong(query: Query, rng: np.random.Generator) -> str:
        return stated(query.gold if rng.random() < 0.8 else wrong(query, rng))

    outcomes, router, composer, test = all_experts(tmp_path, {"weak1": weak, "weak2": weak, "strong": strong}, 400, 1)
    stacked = StackedVote().fit([router], outcomes)
    scores = accuracy(composer, router, {"majority": MajorityVote(), "weighted": WeightedVote(), "s": stacked}, test)
    assert scores["majority"] < 0.6 and scores["weighted"] < 0.6
    assert scores["s"] > 0.72


def test_stacked_measures_what_each_experts_guessed_letters_are_worth(tmp_path: Path) -> None:
    """`guesser` never states an answer but its stray letter is right 90% of the time; the two others
    state answers right 40% of the time. A guess's constant tenth of a vote ignores the guesser."""

    def guesser(query: Query, rng: np.random.Generator) -> str:
        return guessed(query.gold if rng.random() < 0.9 else wrong(query, rng))

    def stater(query: Query, rng: np.random.Generator) -> str:
        return stated(query.gold if rng.random() < 0.4 else wrong(query, rng))

    outcomes, router, composer, test = all_experts(tmp_path, {"a": stater, "b": stater, "guesser": guesser}, 400, 3)
    reliability = measure_reliability(outcomes)
    assert reliability.guessed[2] > 0.8 and reliability.stated[0] < 0.5
    stacked = StackedVote().fit([router], outcomes)
    scores = accuracy(composer, router, {"weighted": WeightedVote(), "stacked": stacked}, test)
    assert scores["stacked"] > scores["weighted"] + 0.2


def test_stacked_reads_which_answers_hedge(tmp_path: Path) -> None:
    """Three equal experts, right 55% of the time; a wrong answer admits doubt ("none of the options
    matches; the closest is ...") 80% of the time, a right one 10%. Counting votes cannot tell them apart;
    the responses' hedging can, and only a model that read the profiling texts uses it."""

    def doubtful(query: Query, rng: np.random.Generator) -> str:
        right = rng.random() < 0.55
        letter = query.gold if right else wrong(query, rng)
        hedged = rng.random() < (0.1 if right else 0.8)
        return ("None of the options matches my result; the closest is this one. " if hedged else "") + stated(letter)

    outcomes, router, composer, test = all_experts(tmp_path, {"a": doubtful, "b": doubtful, "c": doubtful}, 500, 7)
    reading = StackedVote().fit([router], outcomes)
    blind = StackedVote().fit([router], replace(outcomes, texts=None))
    assert reading.read_text_ and not blind.read_text_
    scores = accuracy(composer, router, {"weighted": WeightedVote(), "reading": reading, "blind": blind}, test)
    assert scores["reading"] > max(scores["weighted"], scores["blind"]) + 0.08


def test_stacked_reads_whether_a_worked_out_number_is_the_picked_options(tmp_path: Path) -> None:
    """Three equal experts, right 55% of the time, each working out a number before naming a letter: a
    right answer's number is its option's 90% of the time, a wrong answer's 20% (otherwise it is a
    number no option holds). Counting votes cannot tell right from wrong; reading whether the number
    and the picked option agree can."""
    options = ("12 m", "7.5 m", "3 m", "40 m")

    def working(query: Query, rng: np.random.Generator) -> str:
        right = rng.random() < 0.55
        letter = query.gold if right else wrong(query, rng)
        agrees = rng.random() < (0.9 if right else 0.2)
        number = options[ord(letter) - ord("A")].split()[0] if agrees else "26"
        return f"Working it out, the length is {number} m. " + stated(letter)

    rules = {"a": working, "b": working, "c": working}
    outcomes, router, composer, test = all_experts(tmp_path, rules, 500, 11, choices=options)
    reading = StackedVote().fit([router], outcomes)
    blind = StackedVote().fit([router], replace(outcomes, texts=None))
    scores = accuracy(composer, router, {"weighted": WeightedVote(), "reading": reading, "blind": blind}, test)
    assert scores["reading"] > max(scores["weighted"], scores["blind"]) + 0.08


def test_text_signals_say_whether_the_numbers_worked_out_agree_with_the_option() -> None:
    text = "Then v = 2 * 9.81 / 3 = 6.54 m/s, so the speed is 6.54 m/s. The answer is (C)."
    assert text_signals(text, "6.54 m/s")[2] == 1.0
    assert text_signals(text, "6.5 m/s")[2] == 1.0  # the option rounds the result (within 1%)
    assert text_signals(text, "12 m/s")[2] == -1.0
    assert text_signals(text, "it stays at rest")[2] == 0.0  # an option without a number says nothing
    assert text_signals("Photosynthesis needs light. The answer is (C).", "6.54 m/s")[2] == 0.0
    assert text_signals(text)[2] == 0.0  # no option given


def stacked_and_weighted_on(
    tmp_path: Path, options: Callable[[str, np.random.Generator], tuple[str, ...]], seed: int
) -> dict[str, float]:
    """Three equal experts, right 50% of the time, on 500 profiling items whose options `options` writes:
    the weighted vote's and stacked's accuracy on 300 test items (what stacked can learn lies in the
    options alone)."""

    def equal(query: Query, rng: np.random.Generator) -> str:
        return stated(query.gold if rng.random() < 0.5 else wrong(query, rng))

    rules = {"a": equal, "b": equal, "c": equal}
    outcomes, router, composer, test = all_experts(tmp_path, rules, 500, seed, choices=options)
    stacked = StackedVote().fit([router], outcomes)
    return accuracy(composer, router, {"weighted": WeightedVote(), "stacked": stacked}, test)


def test_stacked_reads_which_option_is_the_longest(tmp_path: Path) -> None:
    """Three equal experts, right 50% of the time, on questions whose right option is the longest in 70%
    of them (as in MMLU-Pro, 21% against 11% by chance): when they disagree, the longer option is the
    better bet, which a vote cannot see."""

    def options(gold: str, rng: np.random.Generator) -> tuple[str, ...]:
        longest = gold if rng.random() < 0.7 else str(rng.choice([x for x in LETTERS if x != gold]))
        return tuple("a long, careful option" if letter == longest else "short" for letter in LETTERS)

    scores = stacked_and_weighted_on(tmp_path, options, 13)
    assert scores["stacked"] > scores["weighted"] + 0.06


def test_longer_options_is_the_share_of_options_longer_than_the_picked_one() -> None:
    choices = ("one", "three", "eleven", "two")
    assert [longer_options(choices, letter) for letter in "ABCD"] == [0.5, 0.25, 0.0, 0.5]
    assert longer_options(choices, "E") == longer_options(None, "A") == 0.5  # beyond the options, or none


def test_stacked_reads_where_a_number_falls_among_the_options(tmp_path: Path) -> None:
    """Three equal experts, right 50% of the time, on questions whose options are numbers and whose right
    one is a middle value in 90% of them (as in MMLU-Pro, whose numeric distractors surround the answer):
    when the experts disagree, the middle value is the better bet, which a vote cannot see."""

    def options(gold: str, rng: np.random.Generator) -> tuple[str, ...]:
        rank = int(rng.choice([1, 2])) if rng.random() < 0.9 else int(rng.choice([0, 3]))
        others = iter(rng.permutation([r for r in range(4) if r != rank]).tolist())
        ranks = [rank if letter == gold else next(others) for letter in LETTERS]
        return tuple(f"{10 * (r + 1)} kg" for r in ranks)

    scores = stacked_and_weighted_on(tmp_path, options, 17)
    assert scores["stacked"] > scores["weighted"] + 0.06


def test_numeric_ranks_order_options_by_their_leading_numbers() -> None:
    assert numeric_ranks(("3 m", "$1,200", "-2.5", "10.5 m")) == pytest.approx([1 / 3, 1.0, 0.0, 2 / 3])
    assert numeric_ranks(("3", "3", "4")) is None  # a repeated number ranks nothing
    assert numeric_ranks(("some", "1", "2")) is None  # an option without a number
    assert numeric_ranks(("1", "2")) is None and numeric_ranks(None) is None


def test_stacked_ignores_texts_unless_every_profiled_answer_kept_one(tmp_path: Path) -> None:
    """A profile that kept no text for some answers (a live expert on a redacted benchmark) would teach
    the model that a missing text is a short, unhedged one: then no text is read, in fitting or at run time."""
    items = synthetic_pool.queries(40, seed=9)

    def right(query: Query, rng: np.random.Generator) -> str:
        return stated(query.gold)

    registry = synthetic_pool.pool(tmp_path, items, {"a": right, "b": right})
    outcomes = synthetic_pool.profiled(registry, items, synthetic_pool.scheduler())
    assert outcomes.texts is not None and has_texts(outcomes)
    partial = outcomes.texts.copy()
    partial[0, 1] = ""
    assert not has_texts(replace(outcomes, texts=partial))


def test_reliability_counts_a_failing_expert_by_its_answers(tmp_path: Path) -> None:
    """An expert with no record on half the items but right whenever it answers is fully reliable:
    a gap is no answer, not a wrong one (while the correctness matrix charges it)."""

    def sometimes(query: Query, rng: np.random.Generator) -> str | None:
        return stated(query.gold) if int(query.id) % 2 else None

    def always(query: Query, rng: np.random.Generator) -> str:
        return stated(query.gold if rng.random() < 0.5 else wrong(query, rng))

    items = synthetic_pool.queries(200, seed=5)
    registry = synthetic_pool.pool(tmp_path, items, {"sometimes": sometimes, "always": always})
    outcomes = synthetic_pool.profiled(registry, items, synthetic_pool.scheduler())
    reliability = measure_reliability(outcomes)
    assert outcomes.accuracy()[0] == pytest.approx(0.5)
    assert reliability.stated[0] > 0.98 and 0.4 < reliability.stated[1] < 0.6


def test_stacked_falls_back_to_majority_for_a_router_it_was_not_fitted_for(tmp_path: Path) -> None:
    items = synthetic_pool.queries(60, seed=6)

    def right(query: Query, rng: np.random.Generator) -> str:
        return stated(query.gold if rng.random() < 0.7 else wrong(query, rng))

    registry = synthetic_pool.pool(tmp_path, items, {"a": right, "b": right, "c": right})
    runner = synthetic_pool.scheduler()
    outcomes = synthetic_pool.profiled(registry, items, runner)
    stacked = StackedVote().fit([AllRouter().fit(outcomes)], outcomes)
    other = BestSingleRouter().fit(outcomes)
    route = AllRouter().fit(outcomes).route(items[:1])[0].model_copy(update={"router": "elsewhere"})
    answers = [ExpertAnswer(expert=e, text=stated(x), choice=x) for e, x in (("a", "B"), ("b", "B"), ("c", "C"))]
    assert stacked.fuse(items[0], route, answers).choice == MajorityVote().fuse(items[0], route, answers).choice == "B"
    assert other.name not in stacked.models_


def test_stacked_needs_fitting_and_letters() -> None:
    with pytest.raises(NotFittedError):
        StackedVote().fuse_batch([], [], [])
    with pytest.raises(ConfigError, match="letters"):
        measure_reliability(Outcomes((), (), np.zeros((0, 0))))
