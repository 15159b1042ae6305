"""A learned aggregator: which of a query's candidate letters is right, predicted from the answers and
the profiling data instead of counted.

A vote of three loses to the strongest expert alone when two weaker experts agree on a wrong letter, and
a fixed weight for a guessed letter (one the response never states) suits one pool and hurts another.
`StackedVote` describes each candidate letter by who voted for it and how far those voters can be
trusted: the rank slots of its voters in the route (stated or guessed), the summed log-odds of their
measured reliability (overall, and in the query's category), their share of the router's score and of
the votes, what its voters' responses say (how many hedging phrases they use, summed, their mean log
length, and how many of them worked out a number that is, or is not, the option's), the share of the
question's options longer than its own (the right option is the longest in 21% of MMLU-Pro's questions,
against 11% by chance), and, where every option opens with a distinct number, where its number falls among
them (`numeric_ranks`: MMLU-Pro's numeric distractors surround the answer; among the 421 ten-option
numeric questions of seed 0's profiling items the right option is one of the two middle values in 49%,
against 20% by chance). A logistic regression trained on the profiling items scores each candidate; the
most probable one wins. It learns from every prefix of a profiled route (the first two answers, the
first three, ...), as a cascade may stop after any of them. Reliabilities are measured per expert on
profiling items: how often its stated letter is right and how often its guessed letter is (so an expert
that often fails is judged by its answers, and a gap is no vote). Training is cross-fitted: each fold of
profiling items is routed by a clone of the router fitted on the other folds and described with the
other folds' reliabilities, so no item scores itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeVar

import numpy as np

from coe.aggregate import MajorityVote, Verdict, Vote
from coe.errors import ConfigError, NotFittedError
from coe.outcomes import Outcomes
from coe.routers.base import Router
from coe.schema import ExpertAnswer, Query, Route

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

T = TypeVar("T")

GUESS_PRIOR = 0.1
"""A guessed letter's reliability before any is measured: about chance on ten options."""
PSEUDO_ITEMS = 10.0
"""How many profiling items a prior counts for (category reliabilities shrink toward the overall one)."""
HEDGES = (
    "closest",
    "none of the",
    "not among",
    "not one of",
    "not listed",
    "however",
    "likely",
    "assum",
    "error",
    "mistake",
    "reconsider",
    "best answer",
)
"""Phrases by which a response admits doubt: its result matched no option, it assumed, it corrected itself
(on the reference pool's profiling items the first expert is right about 40% of the time when it uses
one, against 63% when it does not)."""


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
WORKED_CHARS = 300
"""How much of a response, just before it names its answer, holds the result it worked out."""
ROUNDING = 0.01
"""A worked-out number agrees with an option's within this relative difference (a rounded result)."""


def text_signals(text: str, option: str | None = None) -> tuple[float, float, float]:
    """What a response's text says of its answer: its log length in characters, how many hedging
    phrases it uses, and whether the numbers it works out agree with the option it picks (`option`,
    that option's text): +1 when one of the last three numbers before it names its answer is (to 1%)
    a number of the option, −1 when none is, 0 when either has none. On the reference pool's
    profiling items an expert's stated letter is right 20–57% of the time when its numbers disagree
    with it, against 36–79% when they agree."""
    lowered = text.lower()
    chars, hedges = float(np.log1p(len(text))), float(sum(hedge in lowered for hedge in HEDGES))
    return chars, hedges, _numbers_agree(text, option) if option else 0.0


def _numbers_agree(text: str, option: str) -> float:
    worked = _NUMBER.findall(text.rpartition("answer is")[0][-WORKED_CHARS:] or text[-WORKED_CHARS:])[-3:]
    offered = [float(number) for number in _NUMBER.findall(option)]
    if not worked or not offered:
        return 0.0
    agree = any(abs(float(a) - b) <= ROUNDING * abs(b) for a in worked for b in offered)
    return 1.0 if agree else -1.0


def option_of(options: Sequence[T] | None, letter: str) -> T | None:
    """What a letter names among a question's options, given per option (their texts, their ranks): None
    beyond the options, or without them."""
    index = ord(letter) - ord("A")
    return options[index] if options is not None and 0 <= index < len(options) else None


@dataclass(frozen=True)
class Reliability:
    """Per expert, measured on profiling items: P(right | stated letter), P(right | guessed letter),
    and the stated one per category (shrunk toward the overall one)."""

    experts: tuple[str, ...]
    stated: np.ndarray
    guessed: np.ndarray
    by_category: dict[str, np.ndarray]
    column: dict[str, int] = field(init=False, repr=False, compare=False)
    """Each expert's column in the arrays, by id."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "column", {expert: j for j, expert in enumerate(self.experts)})

    def of(self, expert: int, guessed: bool, category: str | None) -> tuple[float, float]:
        """(overall, category) reliability of one answer of the expert in column `expert`."""
        if guessed:
            return float(self.guessed[expert]), float(self.guessed[expert])
        local = self.by_category.get(category or "", self.stated)
        return float(self.stated[expert]), float(local[expert])

    def confidence(self, answers: Sequence[ExpertAnswer], category: str | None) -> float:
        """How likely the answers so far are right when they all state one letter: the highest category
        reliability among them; 0 when they disagree, guess or fail (what a cascade's threshold reads)."""
        usable = [a for a in answers if a.error is None and a.choice is not None]
        if not usable or len({a.choice for a in usable}) > 1 or any(a.guessed for a in usable):
            return 0.0
        column = self.column
        return max((self.of(column[a.expert], False, category)[1] for a in usable if a.expert in column), default=0.0)


def measure_reliability(outcomes: Outcomes) -> Reliability:
    """How far each expert's stated and guessed letters can be trusted, from outcomes with letters."""
    if outcomes.letters is None or outcomes.guessed is None:
        raise ConfigError("the stacked aggregator needs the experts' letters on the profiling items")
    right = np.nan_to_num(outcomes.correct) == 1
    answered = outcomes.letters != ""
    stated, guessed = answered & ~outcomes.guessed, answered & outcomes.guessed
    stated_rate = (np.sum(right & stated, axis=0) + 1.0) / (np.sum(stated, axis=0) + 2.0)
    guessed_rate = (np.sum(right & guessed, axis=0) + PSEUDO_ITEMS * GUESS_PRIOR) / (
        np.sum(guessed, axis=0) + PSEUDO_ITEMS
    )
    categories = np.array([item.category or "" for item in outcomes.items])
    by_category = {
        name: (np.sum(right & stated & (categories == name)[:, None], axis=0) + PSEUDO_ITEMS * stated_rate)
        / (np.sum(stated & (categories == name)[:, None], axis=0) + PSEUDO_ITEMS)
        for name in sorted(set(categories))
    }
    return Reliability(tuple(outcomes.expert_ids), stated_rate, guessed_rate, by_category)


def logit(p: float) -> float:
    """Log-odds of a reliability, clipped to [0.01, 0.99] so one unanimous record cannot dominate."""
    p = min(max(p, 0.01), 0.99)
    return float(np.log(p / (1 - p)))


@dataclass(frozen=True, slots=True)
class Ballot:
    """One expert's usable answer on one query: its column, its rank in the route, its router score, and
    its response's `text_signals` (zero when the texts are not read)."""

    expert: int
    rank: int
    score: float
    letter: str
    guessed: bool
    chars: float = 0.0
    hedges: float = 0.0
    agrees: float = 0.0


def candidate_features(
    ballots: Sequence[Ballot], reliability: Reliability, query: Query, n_slots: int
) -> tuple[list[str], np.ndarray]:
    """The candidate letters of one query and a feature row for each (see the module docstring)."""
    letters = sorted({b.letter for b in ballots})
    total_score = sum(max(b.score, 0.0) for b in ballots) or 1.0
    category = query.category
    ranks = numeric_ranks(query.choices)
    rows = np.zeros((len(letters), 2 * n_slots + 13))
    for row, letter in zip(rows, letters, strict=True):
        voters = [b for b in ballots if b.letter == letter]
        for b in voters:
            if b.rank < n_slots:
                row[2 * b.rank + int(b.guessed)] = 1.0
            overall, local = reliability.of(b.expert, b.guessed, category)
            row[2 * n_slots] += logit(overall)
            row[2 * n_slots + 1] += logit(local)
        row[2 * n_slots + 2] = sum(max(b.score, 0.0) for b in voters) / total_score
        row[2 * n_slots + 3] = len(voters) / len(ballots)
        row[2 * n_slots + 4] = len(ballots)
        row[2 * n_slots + 5] = sum(b.hedges for b in voters)
        row[2 * n_slots + 6] = sum(b.chars for b in voters) / len(voters)
        row[2 * n_slots + 7] = sum(b.agrees > 0 for b in voters)
        row[2 * n_slots + 8] = sum(b.agrees < 0 for b in voters)
        row[2 * n_slots + 9] = longer_options(query.choices, letter)
        rank = option_of(ranks, letter)
        if rank is not None:
            row[2 * n_slots + 10 : 2 * n_slots + 13] = (1.0, rank, (rank - 0.5) ** 2)
    return letters, rows


def longer_options(choices: Sequence[str] | None, letter: str) -> float:
    """The share of a question's options longer than the one `letter` names (0.5 when unknown)."""
    option = option_of(choices, letter)
    if choices is None or option is None:
        return 0.5
    return sum(len(other) > len(option) for other in choices) / len(choices)


_LEADING_NUMBER = re.compile(r"\s*\$?\s*(-?\d+(?:,\d{3})*(?:\.\d+)?)")


def numeric_ranks(choices: Sequence[str] | None) -> list[float] | None:
    """Each option's rank among the question's options by the number it opens with, 0 for the smallest
    to 1 for the largest; None unless there are three or more options and every one opens with a number
    of its own."""
    if choices is None or len(choices) < 3:
        return None
    matches = [_LEADING_NUMBER.match(option) for option in choices]
    if not all(matches):
        return None
    values = [float(match.group(1).replace(",", "")) for match in matches if match]
    if len(set(values)) < len(values):
        return None
    ranks = np.empty(len(values))
    ranks[np.argsort(values)] = np.arange(len(values)) / (len(values) - 1)
    return ranks.tolist()


def ballots_of(
    query: Query, route: Route, answers: Sequence[ExpertAnswer], column: Mapping[str, int], read_text: bool
) -> list[Ballot]:
    """The usable answers of a query (a failure or an unreadable answer is no vote), in route order;
    their texts' signals are zero unless `read_text`."""
    rank = {choice.expert: (i, choice.score) for i, choice in enumerate(route.experts)}
    return [
        Ballot(column[a.expert], *rank[a.expert], a.choice, a.guessed, *_signals(a.text, query, a.choice, read_text))
        for a in answers
        if a.error is None and a.choice is not None and a.expert in rank and a.expert in column
    ]


def _signals(text: str, query: Query, letter: str, read_text: bool) -> tuple[float, float, float]:
    return text_signals(text, option_of(query.choices, letter)) if read_text else (0.0, 0.0, 0.0)


def fold_of(n_items: int, n_folds: int, random_state: int) -> np.ndarray:
    """Each profiling item's fold for cross-fitting: a seeded shuffle dealt round-robin."""
    return np.random.default_rng(random_state).permutation(n_items) % n_folds


def cross_fitted(router: Router, outcomes: Outcomes, folds: np.ndarray) -> list[tuple[int, Route, Reliability]]:
    """Each profiling item (by index) with its route and the experts' reliability as a clone of `router`
    fitted on the other folds sees them: what a learned model trains on without any item scoring itself."""
    routed: list[tuple[int, Route, Reliability]] = []
    for fold in sorted(set(folds.tolist())):
        train, held = np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)
        if len(train) == 0:
            continue
        clone = type(router)(**router.get_params()).fit(outcomes.subset(train))
        reliability = measure_reliability(outcomes.subset(train))
        routes = clone.route([outcomes.items[i] for i in held])
        routed.extend((int(i), route, reliability) for i, route in zip(held, routes, strict=True))
    return routed


def _profiled_ballots(
    route: Route, outcomes: Outcomes, item: int, column: Mapping[str, int], read_text: bool
) -> list[Ballot]:
    assert outcomes.letters is not None and outcomes.guessed is not None
    ballots = []
    for rank, choice in enumerate(route.experts):
        j = column[choice.expert]
        if outcomes.letters[item, j]:
            text = str(outcomes.texts[item, j]) if outcomes.texts is not None else ""
            letter, guessed = outcomes.letters[item, j], bool(outcomes.guessed[item, j])
            signals = _signals(text, outcomes.items[item], letter, read_text)
            ballots.append(Ballot(j, rank, choice.score, letter, guessed, *signals))
    return ballots


def has_texts(outcomes: Outcomes) -> bool:
    """Whether every answer on the profiling items kept its text (a profile of a redacted benchmark keeps
    none for live experts): only then are the texts' signals learned from, or read at run time."""
    if outcomes.texts is None or outcomes.letters is None:
        return False
    answered = outcomes.letters != ""
    return bool(np.all([len(str(text)) > 0 for text in outcomes.texts[answered]]))


class StackedVote(Vote):
    """Picks the candidate letter a model trained on profiling items finds most likely right; one model
    per router it was fitted for (a route is read by its router's name). A route from a router it was
    not fitted for, or a query without a usable answer, falls back to the majority vote."""

    name: ClassVar[str] = "stacked"

    def __init__(self, *, n_folds: int = 5, random_state: int = 0, regularization: float = 1.0) -> None:
        self.n_folds = n_folds
        self.random_state = random_state
        self.regularization = regularization

    def fit(self, routers: Sequence[Router], outcomes: Outcomes) -> Self:
        """Cross-fit one model per router on the profiling `outcomes` (with the experts' letters)."""
        self.reliability_ = measure_reliability(outcomes)
        self.column_ = self.reliability_.column
        self.read_text_ = has_texts(outcomes)
        folds = fold_of(len(outcomes.items), self.n_folds, self.random_state)
        self.models_: dict[str, tuple[Pipeline | None, int]] = {}
        for router in routers:
            rows: list[np.ndarray] = []
            labels: list[bool] = []
            routed = cross_fitted(router, outcomes, folds)
            n_slots = max((len(route.experts) for _, route, _ in routed), default=1)
            for i, route, reliability in routed:
                item = outcomes.items[i]
                if item.gold is None:
                    continue
                every = _profiled_ballots(route, outcomes, i, self.column_, self.read_text_)
                for asked in range(2, len(route.experts) + 1):
                    ballots = [b for b in every if b.rank < asked]
                    if len({b.letter for b in ballots}) > 1:  # as in fuse: only a disagreement is scored
                        letters, features = candidate_features(ballots, reliability, item, n_slots)
                        rows.append(features)
                        labels.extend(letter == item.gold for letter in letters)
            self.models_[router.name] = (_train(rows, labels, self.regularization), n_slots)
        return self

    def fuse(self, query: Query, route: Route, answers: Sequence[ExpertAnswer]) -> Verdict:
        return self.fuse_batch([query], [route], [answers])[0]

    def fuse_batch(
        self, queries: Sequence[Query], routes: Sequence[Route], answers: Sequence[Sequence[ExpertAnswer]]
    ) -> list[Verdict]:
        if not hasattr(self, "models_"):
            raise NotFittedError(self.name)
        majority = MajorityVote()
        verdicts: list[Verdict | None] = []
        pending: list[tuple[int, list[str], np.ndarray, Pipeline]] = []
        for index, (query, route, answers_of) in enumerate(zip(queries, routes, answers, strict=True)):
            model, n_slots = self.models_.get(route.router, (None, 0))
            ballots = ballots_of(query, route, answers_of, self.column_, self.read_text_)
            if model is None or len({b.letter for b in ballots}) < 2:
                verdicts.append(majority.fuse(query, route, answers_of))
                continue
            letters, features = candidate_features(ballots, self.reliability_, query, n_slots)
            pending.append((index, letters, features, model))
            verdicts.append(None)
        for model in {id(m): m for *_, m in pending}.values():
            mine = [p for p in pending if p[3] is model]
            probabilities = model.predict_proba(np.vstack([p[2] for p in mine]))[:, 1]
            start = 0
            for index, letters, _, _ in mine:
                scores = probabilities[start : start + len(letters)]
                start += len(letters)
                winner = letters[int(np.argmax(scores))]
                text = next(a.text for a in answers[index] if a.error is None and a.choice == winner)
                votes = {letter: float(p) for letter, p in zip(letters, scores, strict=True)}
                verdicts[index] = Verdict(text=text, choice=winner, votes=votes)
        return [v for v in verdicts if v is not None]

    def get_params(self) -> dict[str, Any]:
        return {"n_folds": self.n_folds, "random_state": self.random_state, "regularization": self.regularization}


def _train(rows: list[np.ndarray], labels: list[bool], regularization: float) -> Pipeline | None:
    """A standardized logistic regression on the candidates' rows; None when there is nothing to learn
    (no candidates, or every candidate right or every one wrong)."""
    if not rows or len(set(labels)) < 2:
        return None
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=regularization, max_iter=2000))
    return model.fit(np.vstack(rows), np.array(labels))
