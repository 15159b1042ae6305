"""Aggregators fuse the chosen experts' answers into one.

`fuse(query, route, answers) -> Verdict`: the final text, the chosen letter and the vote tally;
`fuse_batch` does a whole batch (an LLM aggregator batches its calls there). The Composer wraps a
Verdict into an `Answer` with the route, tokens and timings.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from coe.schema import ExpertAnswer, Query, Route


@dataclass(frozen=True, slots=True)
class Verdict:
    text: str
    choice: str | None
    votes: dict[str, float] = field(default_factory=dict)


class Aggregator(Protocol):
    name: ClassVar[str]

    def fuse(self, query: Query, route: Route, answers: Sequence[ExpertAnswer]) -> Verdict: ...

    def fuse_batch(
        self, queries: Sequence[Query], routes: Sequence[Route], answers: Sequence[Sequence[ExpertAnswer]]
    ) -> list[Verdict]: ...


class Vote(ABC):
    """Votes need no model: a batch is each query in turn."""

    name: ClassVar[str]

    @abstractmethod
    def fuse(self, query: Query, route: Route, answers: Sequence[ExpertAnswer]) -> Verdict: ...

    def fuse_batch(
        self, queries: Sequence[Query], routes: Sequence[Route], answers: Sequence[Sequence[ExpertAnswer]]
    ) -> list[Verdict]:
        return [self.fuse(q, r, a) for q, r, a in zip(queries, routes, answers, strict=True)]


def _tally(route: Route, answers: Sequence[ExpertAnswer], weights: dict[str, float]) -> Verdict:
    """Sum `weights` per letter; ties go to the letter whose voters carry the higher router score,
    then to the voter ranked first by the router. Open questions take the top-ranked answer."""
    score = {choice.expert: choice.score for choice in route.experts}
    rank = {choice.expert: i for i, choice in enumerate(route.experts)}
    usable = sorted((a for a in answers if a.error is None), key=lambda a: rank.get(a.expert, len(rank)))
    votes: dict[str, float] = {}
    for answer in usable:
        if answer.choice is not None:
            votes[answer.choice] = votes.get(answer.choice, 0.0) + weights.get(answer.expert, 1.0)
    if not votes:
        text = usable[0].text if usable else ""
        return Verdict(text=text, choice=None, votes={})

    def key(letter: str) -> tuple[float, float, int]:
        voters = [a.expert for a in usable if a.choice == letter]
        return (votes[letter], sum(score.get(v, 0.0) for v in voters), -min(rank.get(v, 99) for v in voters))

    winner = max(votes, key=key)
    text = next(a.text for a in usable if a.choice == winner)
    return Verdict(text=text, choice=winner, votes=votes)


class MajorityVote(Vote):
    """One expert, one vote; deterministic tie-break by router score."""

    name: ClassVar[str] = "majority"

    def fuse(self, query: Query, route: Route, answers: Sequence[ExpertAnswer]) -> Verdict:
        return _tally(route, answers, {})


class WeightedVote(Vote):
    """Votes weighted by the router's score for each expert (its confidence in that expert here)."""

    name: ClassVar[str] = "weighted"

    def fuse(self, query: Query, route: Route, answers: Sequence[ExpertAnswer]) -> Verdict:
        weights = {choice.expert: max(choice.score, 1e-9) for choice in route.experts}
        return _tally(route, answers, weights)
