"""Aggregators fuse the chosen experts' answers into one.

`fuse(query, route, answers) -> Verdict`: the final text, the chosen letter and the vote tally;
`fuse_batch` does a whole batch (an LLM aggregator batches its calls there). The Composer wraps a
Verdict into an `Answer` with the route, tokens and timings.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from coe.answers import format_question, read_choice, strip_reasoning
from coe.errors import ConfigError, UnknownNameError
from coe.registry import Registry
from coe.scheduler import Request, Scheduler
from coe.schema import ExpertAnswer, ExpertSpec, Query, Route
from coe.types import GenerationParams, Prompt


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


def _tally(route: Route, answers: Sequence[ExpertAnswer], weight: Callable[[ExpertAnswer], float]) -> Verdict:
    """Sum each answer's `weight` per letter; ties go to the letter whose voters carry the higher router
    score, then to the voter ranked first by the router. Open questions take the top-ranked answer."""
    score = {choice.expert: choice.score for choice in route.experts}
    rank = {choice.expert: i for i, choice in enumerate(route.experts)}
    usable = sorted((a for a in answers if a.error is None), key=lambda a: rank.get(a.expert, len(rank)))
    votes: dict[str, float] = {}
    for answer in usable:
        if answer.choice is not None:
            votes[answer.choice] = votes.get(answer.choice, 0.0) + weight(answer)
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
        return _tally(route, answers, lambda answer: 1.0)


class WeightedVote(Vote):
    """Votes weighted by how far each answer can be trusted: the router's score for its expert on this
    query, times `guess_weight` when the letter was only guessed. On the reference pool a guessed
    letter is right 8–15% of the time against 48–66% for a stated answer, so a guess should count
    for little; with the default 0.1 it only breaks ties."""

    name: ClassVar[str] = "weighted"

    def __init__(self, guess_weight: float = 0.1) -> None:
        self.guess_weight = guess_weight

    def fuse(self, query: Query, route: Route, answers: Sequence[ExpertAnswer]) -> Verdict:
        trust = {choice.expert: max(choice.score, 1e-9) for choice in route.experts}
        return _tally(route, answers, lambda a: trust.get(a.expert, 1e-9) * (self.guess_weight if a.guessed else 1.0))


SYNTHESIS = (
    "You have been provided with a set of responses from different experts to the question below. "
    "Critically evaluate them: some may be biased or incorrect. Synthesize them into a single, accurate "
    'answer. Think step by step, then finish with "the answer is (X)" where X is the correct letter.'
)


class LlmSynthesis:
    """An aggregator expert reads the chosen experts' answers and writes the final one
    (Mixture-of-Agents, Symbolic-MoE). Reasoning before `</think>` is stripped from its inputs; a
    unanimous vote needs no synthesis; an unreadable synthesis falls back to the majority vote."""

    name: ClassVar[str] = "llm"

    def __init__(
        self, expert: ExpertSpec, scheduler: Scheduler, params: GenerationParams | None = None, max_chars: int = 2000
    ) -> None:
        self.expert = expert
        self.scheduler = scheduler
        self.params = params or GenerationParams(max_tokens=512)
        self.max_chars = max_chars

    def fuse(self, query: Query, route: Route, answers: Sequence[ExpertAnswer]) -> Verdict:
        return self.fuse_batch([query], [route], [answers])[0]

    def fuse_batch(
        self, queries: Sequence[Query], routes: Sequence[Route], answers: Sequence[Sequence[ExpertAnswer]]
    ) -> list[Verdict]:
        majority = MajorityVote()
        votes = [majority.fuse(q, r, a) for q, r, a in zip(queries, routes, answers, strict=True)]
        pending = [
            i
            for i, (verdict, answers_of) in enumerate(zip(votes, answers, strict=True))
            if len([a for a in answers_of if a.error is None]) > 1 and len(verdict.votes) != 1
        ]
        prompts = [self.prompt(queries[i], answers[i]) for i in pending]
        requests = [Request(self.expert, Prompt(text, query_id=_digest(text))) for text in prompts]
        outputs, _ = self.scheduler.run(requests, self.params)
        verdicts = list(votes)
        for i, output in zip(pending, outputs, strict=True):
            n_choices = len(queries[i].choices or ())
            choice = read_choice(output.text, n_choices).letter if output.ok and n_choices else None
            if output.ok and (choice is not None or not n_choices):
                verdicts[i] = Verdict(text=output.text, choice=choice, votes=votes[i].votes)
        return verdicts

    def prompt(self, query: Query, answers: Sequence[ExpertAnswer]) -> str:
        responses = "\n\n".join(
            f"Response {n}:\n{strip_reasoning(a.text)[: self.max_chars]}"
            for n, a in enumerate((a for a in answers if a.error is None), 1)
        )
        return f"{SYNTHESIS}\n\n{format_question(query.text, query.choices, query.category)}\n\n{responses}"


def _digest(text: str) -> str:
    """A cache key for a synthesis prompt: the same inputs are synthesized once."""
    return "fuse:" + hashlib.sha256(text.encode()).hexdigest()[:24]


AGGREGATORS = ("majority", "weighted", "stacked", "llm")
"""`stacked` (coe.stacked) is trained on a router's profiling routes: the composition builder makes it."""


def make_aggregator(
    name: str,
    *,
    registry: Registry | None = None,
    scheduler: Scheduler | None = None,
    expert: str | None = None,
) -> Aggregator:
    """An aggregator by name; `llm` needs the aggregator expert's id, the registry and a scheduler."""
    if name == "majority":
        return MajorityVote()
    if name == "weighted":
        return WeightedVote()
    if name == "llm":
        if registry is None or scheduler is None or expert is None:
            raise ConfigError(
                "the llm aggregator needs an aggregator expert: pass --aggregator-expert ID "
                "(or run `coe aggregators probe` to choose and store one)"
            )
        return LlmSynthesis(registry[expert], scheduler)
    if name == "stacked":
        raise ConfigError("the stacked aggregator is fitted for a router: build it with the composition builder")
    raise UnknownNameError("aggregator", name, AGGREGATORS)
