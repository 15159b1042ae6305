"""How many of its route's experts each query asks: the k policy a composition names (`k_policy:`).

The router still ranks k experts; the Composer asks them in rounds, each round one expert-batched
scheduler run, and asks one more of a query's experts only while its policy says the answers so far are
not enough: all of them (`fixed`), the fewest whose router scores reach a share of the route's
(`topp:P`), or a cascade (`cascade`, `auto`) that stops once the votes could no longer be overturned by
the experts not yet asked, or, with a threshold, once the answers state one letter whose measured
reliability in the query's category reaches it; `agree` asks two and then one more at a time until one
letter holds two thirds of the answers (two of two, two of three, three of four, four of six), so the
experts past the first three are asked only where the first three all differ. `calls:B` chooses that
threshold per router on the profiling items so the cascade spends at most B calls per query
(`calibrate`); `gain:B` instead asks on where a learned stop rule (`coe.stoprule`) expects the most
gain, as far as B calls per query allow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from coe.errors import ConfigError
from coe.outcomes import Outcomes
from coe.routers import Router
from coe.schema import ExpertAnswer, Query, Route
from coe.stacked import Reliability
from coe.stoprule import StopRule, decided, fit_stop_rule, recorded_answers


@dataclass(frozen=True, slots=True)
class KPolicy:
    """How many of its route's experts (the router's k, best first) each query asks."""

    kind: Literal["fixed", "topp", "cascade"] = "fixed"
    start: int = 2
    """cascade: experts asked in the first round."""
    threshold: float | None = None
    """cascade: also stop once the answers so far state one letter whose measured reliability in the
    query's category reaches this (the composer needs the pool's `Reliability`)."""
    budget: float | None = None
    """cascade from one expert: the threshold is the highest whose cascade, replayed on the profiling
    items, asks at most this many experts per query on average (`calibrate` finds it per router)."""
    mass: float = 1.0
    """topp: the share of the route's summed scores the asked experts must reach."""
    learned: bool = False
    """budget cascade (`gain:B`): ask on where the learned stop rule's expected gain reaches `threshold`
    (chosen, with the rule, by `calibrate`) instead of where the answers' reliability falls short of it."""
    rule: StopRule | None = field(default=None, compare=False, repr=False)
    """The learned stop rule (`calibrate` fits it per router)."""
    share: float | None = None
    """cascade (`agree:P`): also stop once one letter holds at least this share of the letters so far
    (stated or guessed), and at least two of them."""

    @classmethod
    def parse(cls, text: str) -> KPolicy:
        """`fixed`, `auto` (= `cascade`), `cascade`, `cascade:START`, `cascade:START:THRESHOLD`, `calls:B`,
        `gain:B`, `agree`, `agree:P` or `topp:P`."""
        kind, _, value = text.partition(":")
        start_text, _, threshold_text = value.partition(":")
        try:
            if kind in ("fixed", "auto") and not value:
                return cls(kind="fixed") if kind == "fixed" else cls(kind="cascade")
            threshold = float(threshold_text) if threshold_text else None
            if kind == "cascade" and int(start_text or 2) >= 1 and (threshold is None or 0 < threshold <= 1):
                return cls(kind="cascade", start=int(start_text or 2), threshold=threshold)
            if kind in ("calls", "gain") and float(value) >= 1:
                return cls(kind="cascade", start=1, budget=float(value), learned=kind == "gain")
            if kind == "agree" and (not value or 0.5 < float(value) <= 1):
                return cls(kind="cascade", start=2, share=float(value) if value else 2 / 3)
            if kind == "topp" and 0 < float(value) <= 1:
                return cls(kind="topp", mass=float(value))
        except ValueError:
            pass
        raise ConfigError(
            f"k policy {text!r}: expected fixed, auto, cascade, cascade:START (≥ 1), cascade:START:THRESHOLD "
            "(0 < THRESHOLD ≤ 1), calls:BUDGET or gain:BUDGET (≥ 1), agree or agree:SHARE (0.5 < SHARE ≤ 1) "
            "or topp:P (0 < P ≤ 1)"
        )

    def __str__(self) -> str:
        if self.budget is not None:
            return f"{'gain' if self.learned else 'calls'}:{self.budget:g}"
        if self.share is not None:
            return "agree" if self.share == 2 / 3 else f"agree:{self.share:g}"
        if self.kind == "cascade":
            return f"cascade:{self.start}" + (f":{self.threshold:g}" if self.threshold is not None else "")
        return "fixed" if self.kind == "fixed" else f"topp:{self.mass:g}"

    def first(self, route: Route) -> int:
        """Experts asked in the first round."""
        n = len(route.experts)
        if self.kind == "cascade":
            return min(self.start, n)
        if self.kind == "topp" and n:
            scores = [max(choice.score, 0.0) for choice in route.experts]
            total, reached = sum(scores), 0.0
            for asked, score in enumerate(scores, 1):
                reached += score
                if total <= 0 or reached >= self.mass * total - 1e-12:
                    return asked
        return n

    def settled(
        self,
        answers: Sequence[ExpertAnswer],
        remaining: int,
        category: str | None = None,
        reliability: Reliability | None = None,
    ) -> bool:
        """Whether to stop asking: the `remaining` experts could no longer change the vote
        (`coe.stoprule.decided`), or, with a threshold, the answers so far are confident enough (a
        learned rule: asking on is expected to gain less than the threshold)."""
        if self.kind != "cascade" or remaining <= 0:
            return True
        if self.budget is not None and (self.threshold is None or (self.learned and self.rule is None)):
            raise ConfigError(f"k policy {self}: calibrate it for the router first (`coe.policy.calibrate`)")
        if decided(answers, remaining):
            return True
        if self.share is not None:
            return agreed(answers, self.share)
        if self.threshold is None:
            return False
        if reliability is None:
            raise ConfigError(f"k policy {self}: a threshold needs the pool's measured reliability (a profile)")
        if self.rule is not None:
            return self.rule.gain(answers, category, reliability) < self.threshold
        return reliability.confidence(answers, category) >= self.threshold


def agreed(answers: Sequence[ExpertAnswer], share: float) -> bool:
    """Whether one letter holds at least `share` of the answers' letters (stated or guessed: counting
    stated ones only asked more for the same accuracy), and at least two of them."""
    letters = [a.choice for a in answers if a.error is None and a.choice is not None]
    most = max((letters.count(letter) for letter in set(letters)), default=0)
    return most >= 2 and most >= share * len(letters) - 1e-9


THRESHOLDS = tuple(np.round(np.arange(0.30, 1.0001, 0.01), 2))
"""The thresholds a budget policy chooses among."""


def calibrate(
    policy: KPolicy,
    router: Router,
    outcomes: Outcomes,
    reliability: Reliability,
    asked: Callable[[Sequence[Query], list[Route]], list[Route]] | None = None,
) -> KPolicy:
    """A budget policy made concrete for `router`: the highest threshold whose cascade, replayed on the
    profiling items' recorded letters (`outcomes.letters`) along the router's routes as they would be
    asked (`asked`: the composition's cost cap, say), asks at most `policy.budget` experts per query on
    average (the lowest threshold when none does); for `gain:B`, the stop rule fitted for the router and
    the lowest gain whose cascade does (`learned_calibration`). Other policies come back unchanged."""
    if policy.budget is None or outcomes.letters is None or outcomes.guessed is None:
        return policy
    if policy.learned:
        return learned_calibration(policy, router, outcomes, asked)
    routes = router.route(outcomes.items)
    if asked is not None:
        routes = asked(outcomes.items, routes)
    answers = [recorded_answers(outcomes, i, route) for i, route in enumerate(routes)]

    def calls(threshold: float) -> float:
        concrete = replace(policy, threshold=threshold)
        spent = []
        for item, route, asked in zip(outcomes.items, routes, answers, strict=True):
            n = concrete.first(route)
            while not concrete.settled(asked[:n], len(asked) - n, item.category, reliability):
                n += 1
            spent.append(n)
        return float(np.mean(spent)) if spent else 0.0

    low, high = 0, len(THRESHOLDS) - 1  # calls grow with the threshold: the last one within budget
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if calls(THRESHOLDS[middle]) <= policy.budget else (low, middle - 1)
    return replace(policy, threshold=float(THRESHOLDS[low]))


def learned_calibration(
    policy: KPolicy,
    router: Router,
    outcomes: Outcomes,
    asked: Callable[[Sequence[Query], list[Route]], list[Route]] | None = None,
) -> KPolicy:
    """`gain:B` made concrete: the stop rule cross-fitted for `router` on the profiling items, and the
    lowest positive expected gain to ask on for which the cascade, replayed on them with each item's
    gains from the models that did not see it, asks at most B experts per query on average."""
    assert policy.budget is not None
    rule, replay = fit_stop_rule(router, outcomes, asked=asked)

    def calls(threshold: float) -> float:
        spent = []
        for answers, gains in zip(replay.answers, replay.gains, strict=True):
            n = min(policy.start, len(answers))
            while n < len(answers) and not decided(answers[:n], len(answers) - n) and gains[n - 1] >= threshold:
                n += 1
            spent.append(n)
        return float(np.mean(spent)) if spent else 0.0

    candidates = [*sorted({g for gains in replay.gains for g in gains if g > 0}), np.inf]  # never ask at a loss
    low, high = 0, len(candidates) - 1  # calls fall as the threshold grows: the first one within budget
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if calls(candidates[middle]) <= policy.budget else (middle + 1, high)
    return replace(policy, threshold=float(candidates[low]), rule=rule)
