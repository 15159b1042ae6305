"""How many of its route's experts each query asks: the k policy a composition names (`k_policy:`).

The router still ranks k experts; the Composer asks them in rounds, each round one expert-batched
scheduler run, and asks one more of a query's experts only while its policy says the answers so far
are not enough: all of them (`fixed`), the fewest whose router scores reach a share of the route's
(`topp:P`), or a cascade (`cascade`, `auto`) that stops once the votes could no longer be overturned by
the experts not yet asked, or, with a threshold, once the answers state one letter whose measured
reliability in the query's category reaches it. `calls:B` chooses that threshold per router on the
profiling items so the cascade spends at most B calls per query (`calibrate`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from coe.errors import ConfigError
from coe.outcomes import Outcomes
from coe.routers import Router
from coe.schema import ExpertAnswer, Query, Route
from coe.stacked import Reliability


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

    @classmethod
    def parse(cls, text: str) -> KPolicy:
        """`fixed`, `auto` (= `cascade`), `cascade`, `cascade:START`, `cascade:START:THRESHOLD` or `topp:P`."""
        kind, _, value = text.partition(":")
        start_text, _, threshold_text = value.partition(":")
        try:
            if kind in ("fixed", "auto") and not value:
                return cls(kind="fixed") if kind == "fixed" else cls(kind="cascade")
            threshold = float(threshold_text) if threshold_text else None
            if kind == "cascade" and int(start_text or 2) >= 1 and (threshold is None or 0 < threshold <= 1):
                return cls(kind="cascade", start=int(start_text or 2), threshold=threshold)
            if kind == "calls" and float(value) >= 1:
                return cls(kind="cascade", start=1, budget=float(value))
            if kind == "topp" and 0 < float(value) <= 1:
                return cls(kind="topp", mass=float(value))
        except ValueError:
            pass
        raise ConfigError(
            f"k policy {text!r}: expected fixed, auto, cascade, cascade:START (≥ 1), cascade:START:THRESHOLD "
            "(0 < THRESHOLD ≤ 1), calls:BUDGET (≥ 1) or topp:P (0 < P ≤ 1)"
        )

    def __str__(self) -> str:
        if self.budget is not None:
            return f"calls:{self.budget:g}"
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
        """Whether to stop asking: the `remaining` experts could no longer change the vote (the leading
        stated letter is ahead of every other letter by more than `remaining`; a guessed letter counts
        for none), or, with a threshold, the answers so far are confident enough."""
        if self.kind != "cascade" or remaining <= 0:
            return True
        if self.budget is not None and self.threshold is None:
            raise ConfigError(f"k policy {self}: calibrate it for the router first (`coe.policy.calibrate`)")
        if self.threshold is not None:
            if reliability is None:
                raise ConfigError(f"k policy {self}: a threshold needs the pool's measured reliability (a profile)")
            if reliability.confidence(answers, category) >= self.threshold:
                return True
        counts: dict[str, int] = {}
        for answer in answers:
            if answer.error is None and answer.choice is not None:
                counts[answer.choice] = counts.get(answer.choice, 0) + (0 if answer.guessed else 1)
        ranked = [*sorted(counts.values(), reverse=True), 0, 0]
        return ranked[0] - ranked[1] > remaining


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
    average (the lowest threshold when none does). Other policies come back unchanged."""
    if policy.budget is None or outcomes.letters is None or outcomes.guessed is None:
        return policy
    routes = router.route(outcomes.items)
    if asked is not None:
        routes = asked(outcomes.items, routes)
    column = {expert: j for j, expert in enumerate(outcomes.expert_ids)}
    answers = [
        [
            ExpertAnswer.model_construct(
                expert=e, text="", choice=outcomes.letters[i, column[e]] or None, guessed=outcomes.guessed[i, column[e]]
            )
            for e in route.expert_ids
        ]
        for i, route in enumerate(routes)
    ]

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
