"""k policies on recorded pools where the right answer is known: a cascade asks a third expert only
when the first two could be outvoted, and then gives the fixed-k vote's answer on every item; a
threshold stops after one expert where it is measured reliable; topp follows the router's scores."""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from coe.aggregate import MajorityVote
from coe.composer import BatchResult, Composer
from coe.errors import ConfigError
from coe.outcomes import Outcomes
from coe.policy import KPolicy, calibrate
from coe.registry import Registry
from coe.routers import AllRouter
from coe.scheduler import Scheduler
from coe.schema import Answer, ExpertChoice, Query, Route
from coe.stacked import measure_reliability
from tests import synthetic_pool
from tests.synthetic_pool import guessed, stated, wrong


def noisy(p_right: float, guess_share: float = 0.0):
    def rule(query: Query, rng: np.random.Generator) -> str:
        letter = query.gold if rng.random() < p_right else wrong(query, rng)
        return guessed(letter) if rng.random() < guess_share else stated(letter)

    return rule


@pytest.mark.parametrize(
    ("text", "policy"),
    [
        ("fixed", KPolicy()),
        ("auto", KPolicy(kind="cascade", start=2)),
        ("cascade:1", KPolicy(kind="cascade", start=1)),
        ("cascade:1:0.7", KPolicy(kind="cascade", start=1, threshold=0.7)),
        ("topp:0.8", KPolicy(kind="topp", mass=0.8)),
        ("calls:2", KPolicy(kind="cascade", start=1, budget=2.0)),
        ("gain:1.5", KPolicy(kind="cascade", start=1, budget=1.5, learned=True)),
        ("agree", KPolicy(kind="cascade", start=2, share=2 / 3)),
        ("agree:0.75", KPolicy(kind="cascade", start=2, share=0.75)),
    ],
)
def test_policies_parse_and_print_back(text: str, policy: KPolicy) -> None:
    assert KPolicy.parse(text) == policy
    assert KPolicy.parse(str(policy)) == policy


@pytest.mark.parametrize(
    "text",
    [
        "",
        "cascade:0",
        "cascade:2:1.5",
        "topp:0",
        "topp:x",
        "auto:3",
        "calls:0.5",
        "gain:0",
        "agree:0.5",
        "agree:2",
        "sometimes",
    ],
)
def test_unknown_policies_are_one_clear_error(text: str) -> None:
    with pytest.raises(ConfigError, match="expected fixed, auto"):
        KPolicy.parse(text)


def test_topp_asks_the_fewest_experts_whose_scores_reach_the_share() -> None:
    route = Route(
        query_id="q",
        experts=tuple(ExpertChoice(expert=e, score=s) for e, s in (("a", 0.5), ("b", 0.3), ("c", 0.2))),
        reason="t",
        router="t",
    )
    assert [KPolicy.parse(f"topp:{p}").first(route) for p in (0.5, 0.6, 0.8, 0.81, 1)] == [1, 2, 2, 3, 3]


def fixed_and_policy(
    tmp_path: Path, rules: dict[str, synthetic_pool.Rule], policy: str, n_profile: int, seed: int
) -> tuple[BatchResult, BatchResult]:
    """The all-experts router's answers on 300 test items, asking every expert and under `policy`."""
    items, test = synthetic_pool.queries(n_profile, seed=seed), synthetic_pool.queries(300, seed=seed + 1)
    registry = synthetic_pool.pool(tmp_path, items + test, rules)
    runner = synthetic_pool.scheduler()
    router = AllRouter().fit(synthetic_pool.profiled(registry, items, runner))
    fixed = Composer(registry, router=router, backends=runner.backends, scheduler=runner).run(test)
    asked = Composer(
        registry, router=router, backends=runner.backends, scheduler=runner, k_policy=KPolicy.parse(policy)
    ).run(test)
    return fixed, asked


def test_cascade_asks_a_third_only_on_disagreement_and_keeps_the_fixed_vote(tmp_path: Path) -> None:
    rules = {"a": noisy(0.7, guess_share=0.1), "b": noisy(0.6, guess_share=0.1), "c": noisy(0.5)}
    fixed, cascade = fixed_and_policy(tmp_path, rules, "auto", 100, seed=1)
    for full, short in zip(fixed.answers, cascade.answers, strict=True):
        first_two = full.expert_answers[:2]
        agree = first_two[0].choice == first_two[1].choice and not any(a.guessed for a in first_two)
        assert len(short.experts) == (2 if agree else 3)
        assert short.choice == full.choice
    calls = [len(a.experts) for a in cascade.answers]
    assert 2 < np.mean(calls) < 3
    assert cascade.stats.n_requests == sum(calls)


def test_agree_asks_on_until_one_letter_holds_two_thirds_of_the_answers(tmp_path: Path) -> None:
    """Four noisy experts: the cascade stops at two that agree, at a 2–1 split of three, at 3–1 of four,
    and otherwise asks all four; a guessed letter counts as a letter."""
    rules = {name: noisy(0.5, guess_share=0.2) for name in "abcd"}
    fixed, agree = fixed_and_policy(tmp_path, rules, "agree", 50, seed=11)

    def expected(letters: list[str | None]) -> int:
        for asked in range(2, 4):
            most = max(letters[:asked].count(letter) for letter in letters[:asked])
            if most >= 2 and most >= 2 / 3 * asked:
                return asked
        return 4

    calls = [len(short.experts) for short in agree.answers]
    assert calls == [expected([a.choice for a in full.expert_answers]) for full in fixed.answers]
    assert {2, 3, 4} <= set(calls)
    assert agree.stats.n_requests == sum(calls)


def test_a_threshold_stops_after_one_expert_where_it_is_reliable(tmp_path: Path) -> None:
    """`a` is always right on math and at chance on law: math queries ask it alone, law ones ask on."""

    def a(query: Query, rng: np.random.Generator) -> str:
        return stated(query.gold if query.category == "math" or rng.random() < 0.25 else wrong(query, rng))

    items, test = synthetic_pool.queries(200, seed=3), synthetic_pool.queries(200, seed=4)
    registry = synthetic_pool.pool(tmp_path, items + test, {"a": a, "b": noisy(0.55), "c": noisy(0.5)})
    runner = synthetic_pool.scheduler()
    outcomes = synthetic_pool.profiled(registry, items, runner)
    router = AllRouter().fit(outcomes)
    composer = Composer(
        registry,
        router=router,
        aggregator=MajorityVote(),
        backends=runner.backends,
        scheduler=runner,
        k_policy=KPolicy.parse("cascade:1:0.9"),
        reliability=measure_reliability(outcomes),
    )
    answers = composer.run(test).answers
    by_category = {
        c: [len(x.experts) for x, q in zip(answers, test, strict=True) if q.category == c] for c in ("math", "law")
    }
    assert set(by_category["math"]) == {1}
    assert min(by_category["law"]) >= 2
    assert np.mean([x.correct for x, q in zip(answers, test, strict=True) if q.category == "math"]) == 1.0


def test_a_threshold_without_a_profile_is_a_clear_error(tmp_path: Path) -> None:
    items = synthetic_pool.queries(10, seed=5)
    registry = synthetic_pool.pool(tmp_path, items, {"a": noisy(0.5), "b": noisy(0.5)})
    runner = synthetic_pool.scheduler()
    router = AllRouter().fit(synthetic_pool.profiled(registry, items, runner))
    composer = Composer(
        registry, router=router, backends=runner.backends, scheduler=runner, k_policy=KPolicy.parse("cascade:1:0.5")
    )
    with pytest.raises(ConfigError, match="reliability"):
        composer.run(items)


def test_a_budget_of_calls_chooses_the_highest_threshold_within_it_on_profiling_items(tmp_path: Path) -> None:
    """Expert `a` is reliable on math only: a budget of 2 calls buys the law queries more experts."""

    def a(query: Query, rng: np.random.Generator) -> str:
        return stated(query.gold if query.category == "math" or rng.random() < 0.5 else wrong(query, rng))

    items, test = synthetic_pool.queries(300, seed=7), synthetic_pool.queries(300, seed=8)
    registry = synthetic_pool.pool(tmp_path, items + test, {"a": a, "b": noisy(0.6), "c": noisy(0.5)})
    runner = synthetic_pool.scheduler()
    outcomes = synthetic_pool.profiled(registry, items, runner)
    router = AllRouter().fit(outcomes)
    reliability = measure_reliability(outcomes)
    policies = {
        budget: calibrate(KPolicy.parse(f"calls:{budget}"), router, outcomes, reliability) for budget in (2.0, 3)
    }
    assert policies[2.0].threshold is not None and policies[3].threshold == 1.0
    assert policies[2.0].threshold < reliability.by_category["math"][0]  # math stops after `a`

    def two_asked(queries: Sequence[Query], routes: list[Route]) -> list[Route]:  # a cap that admits two
        return [route.model_copy(update={"experts": route.experts[:2]}) for route in routes]

    capped = calibrate(KPolicy.parse("calls:2.0"), router, outcomes, reliability, two_asked)
    assert capped.threshold == 1.0  # the routes as asked: two calls at most, whatever the threshold
    composer = Composer(registry, router=router, backends=runner.backends, scheduler=runner)
    composer.k_policy, composer.reliability = KPolicy.parse("calls:2.0"), reliability
    with pytest.raises(ConfigError, match="calibrate"):
        composer.run(test[:5])
    composer.calibrated = {router.name: policies[2.0]}
    calls = [len(answer.experts) for answer in composer.run(test).answers]
    assert 1.5 < np.mean(calls) <= 2.1
    assert all(n == 1 for n, q in zip(calls, test, strict=True) if q.category == "math")


def budgeted(registry: Registry, runner: Scheduler, outcomes: Outcomes, test: list[Query], policy: str) -> list[Answer]:
    """The test answers of a budget policy calibrated for the router on the profiling `outcomes`."""
    router = AllRouter().fit(outcomes)
    reliability = measure_reliability(outcomes)
    composer = Composer(registry, router=router, backends=runner.backends, scheduler=runner)
    composer.k_policy, composer.reliability = KPolicy.parse(policy), reliability
    composer.calibrated = {router.name: calibrate(composer.k_policy, router, outcomes, reliability)}
    return composer.run(test).answers


def calls_and_accuracy(answers: list[Answer]) -> tuple[float, float]:
    return float(np.mean([len(a.experts) for a in answers])), float(np.mean([a.correct for a in answers]))


def test_a_learned_stop_rule_asks_on_where_the_first_answer_hedges(tmp_path: Path) -> None:
    """`a` is right 70% of the time everywhere and hedges ("the closest option") on most of its wrong
    answers; `b` and `c` are right 60% of the time, independently. The threshold rule sees one
    reliability for every stated answer of `a`, so within 2 calls it asks `a` alone; the learned rule
    asks on where `a` hedges, and there the two others' agreement fixes many of its answers."""

    def a(query: Query, rng: np.random.Generator) -> str:
        right = rng.random() < 0.7
        letter = query.gold if right else wrong(query, rng)
        if rng.random() < (0.1 if right else 0.8):
            return f"None of the options matches; the closest is ({letter}). the answer is ({letter})"
        return stated(letter)

    items, test = synthetic_pool.queries(600, seed=9), synthetic_pool.queries(600, seed=10)
    registry = synthetic_pool.pool(tmp_path, items + test, {"a": a, "b": noisy(0.6), "c": noisy(0.6)})
    runner = synthetic_pool.scheduler()
    outcomes = synthetic_pool.profiled(registry, items, runner)
    threshold_calls, threshold_accuracy = calls_and_accuracy(budgeted(registry, runner, outcomes, test, "calls:2"))
    learned = budgeted(registry, runner, outcomes, test, "gain:2")
    learned_calls, learned_accuracy = calls_and_accuracy(learned)
    assert threshold_calls == 1.0
    assert 1.2 < learned_calls <= 2.1
    assert learned_accuracy > threshold_accuracy + 0.04
    hedged = ["closest" in answer.expert_answers[0].text for answer in learned]
    assert all(len(answer.experts) > 1 for answer, hedge in zip(learned, hedged, strict=True) if hedge)
    assert np.mean([len(answer.experts) for answer, hedge in zip(learned, hedged, strict=True) if not hedge]) < 1.2


def test_a_learned_stop_rule_does_not_ask_experts_whose_vote_would_overrule_a_better_answer(tmp_path: Path) -> None:
    """`a` is right 90% of the time on math and 65% on law; `b` and `c` always give the same letter,
    right half the time, so their vote overrules `a` wrongly more often than rightly (the second pool's
    trouble). The threshold rule spends the budget on law, where `a` is less reliable, and loses there;
    the learned rule measures that asking on loses and keeps `a`'s answers."""
    shared: dict[str, str] = {}

    def a(query: Query, rng: np.random.Generator) -> str:
        return stated(query.gold if rng.random() < (0.9 if query.category == "math" else 0.65) else wrong(query, rng))

    def follower(query: Query, rng: np.random.Generator) -> str:
        if query.id not in shared:
            shared[query.id] = query.gold if rng.random() < 0.5 else wrong(query, rng)
        return stated(shared[query.id])

    items, test = synthetic_pool.queries(600, seed=11), synthetic_pool.queries(600, seed=12)
    registry = synthetic_pool.pool(tmp_path, items + test, {"a": a, "b": follower, "c": follower})
    runner = synthetic_pool.scheduler()
    outcomes = synthetic_pool.profiled(registry, items, runner)
    threshold_calls, threshold_accuracy = calls_and_accuracy(budgeted(registry, runner, outcomes, test, "calls:2"))
    learned_calls, learned_accuracy = calls_and_accuracy(budgeted(registry, runner, outcomes, test, "gain:2"))
    alone = float(np.mean([answer.correct for answer in budgeted(registry, runner, outcomes, test, "calls:1")]))
    assert threshold_calls > 1.3 and threshold_accuracy < alone - 0.03
    assert learned_calls < 1.1 and learned_accuracy >= alone - 0.01


def test_a_learned_stop_rule_is_fitted_on_the_routes_as_asked_and_needed_before_use(tmp_path: Path) -> None:
    items, test = synthetic_pool.queries(200, seed=13), synthetic_pool.queries(20, seed=14)
    registry = synthetic_pool.pool(tmp_path, items + test, {"a": noisy(0.7), "b": noisy(0.6), "c": noisy(0.5)})
    runner = synthetic_pool.scheduler()
    outcomes = synthetic_pool.profiled(registry, items, runner)
    router = AllRouter().fit(outcomes)
    reliability = measure_reliability(outcomes)

    def two_asked(queries: Sequence[Query], routes: list[Route]) -> list[Route]:
        return [route.model_copy(update={"experts": route.experts[:2]}) for route in routes]

    capped = calibrate(KPolicy.parse("gain:3"), router, outcomes, reliability, two_asked)
    assert capped.rule is not None and len(capped.rule.now) == 1  # one stage: after the first of two
    composer = Composer(registry, router=router, backends=runner.backends, scheduler=runner)
    composer.k_policy, composer.reliability = KPolicy.parse("gain:2"), reliability
    with pytest.raises(ConfigError, match="calibrate"):
        composer.run(test)
