"""A learned stop rule for a cascade (`gain:B`): ask one more expert where it is expected to turn a
wrong answer into a right one, not wherever the first answer looks unreliable.

After each stage of a cascade (the first s experts of the route have answered), two logistic models
trained on the profiling items estimate how likely the vote of the answers so far is right and how
likely the vote of all the route's experts is; their difference is the expected gain of asking on. The
features are what is known at that point: for each answer so far, whether its letter was stated,
guessed or missing, its expert's measured reliability (log-odds, overall and in the query's category),
the response's length (log characters and its square) and how many hedging phrases it uses; and how
many distinct letters the answers give. Training is cross-fitted (`coe.stacked.cross_fitted`): each
fold of profiling items is routed and described by what the other folds measured, and gets its gains
from the models trained on the other folds (what `coe.policy.calibrate` replays to choose the gain a
query must reach for the budget); a new query's gain is the mean of the fold models' gains.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from coe.aggregate import Vote, WeightedVote
from coe.outcomes import Outcomes
from coe.routers import Router
from coe.schema import ExpertAnswer, Query, Route
from coe.stacked import Reliability, cross_fitted, fold_of, has_texts, logit, text_signals


def decided(answers: Sequence[ExpertAnswer], remaining: int) -> bool:
    """Whether `remaining` more experts could no longer change the vote: the leading stated letter is
    ahead of every other letter by more than `remaining` (a guessed letter counts for none)."""
    counts: dict[str, int] = {}
    for answer in answers:
        if answer.error is None and answer.choice is not None:
            counts[answer.choice] = counts.get(answer.choice, 0) + (0 if answer.guessed else 1)
    ranked = [*sorted(counts.values(), reverse=True), 0, 0]
    return ranked[0] - ranked[1] > remaining


def recorded_answers(outcomes: Outcomes, item: int, route: Route) -> list[ExpertAnswer]:
    """A profiling item's recorded answers (`outcomes.letters`, `guessed`, `texts`) in route order."""
    assert outcomes.letters is not None and outcomes.guessed is not None
    column = {expert: j for j, expert in enumerate(outcomes.expert_ids)}
    answers = []
    for expert in route.expert_ids:
        j = column[expert]
        text = str(outcomes.texts[item, j]) if outcomes.texts is not None else ""
        letter = outcomes.letters[item, j] or None
        answers.append(
            ExpertAnswer.model_construct(expert=expert, text=text, choice=letter, guessed=outcomes.guessed[item, j])
        )
    return answers


def stage_features(
    answers: Sequence[ExpertAnswer], category: str | None, reliability: Reliability, read_text: bool
) -> np.ndarray:
    """The feature row of a query after its answers so far (see the module docstring); the text's
    features are zero unless `read_text` (the profiling items kept no texts)."""
    column = reliability.column
    row: list[float] = []
    letters = set()
    for answer in answers:
        if answer.error is None and answer.choice is not None and answer.expert in column:
            overall, local = reliability.of(column[answer.expert], answer.guessed, category)
            row += [float(not answer.guessed), float(answer.guessed), logit(overall), logit(local)]
            letters.add(answer.choice)
        else:
            row += [0.0, 0.0, 0.0, 0.0]
        chars, hedges, _ = text_signals(answer.text if read_text else "")
        row += [chars, chars**2, hedges]
    row.append(float(len(letters)))
    return np.array(row)


@dataclass(frozen=True)
class Logistic:
    """A logistic regression on standardized features, kept as arrays (a query's gain is one dot product)."""

    center: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float

    @classmethod
    def fit(cls, rows: np.ndarray, labels: np.ndarray, regularization: float) -> Logistic:
        """Fitted on `rows`; a constant (the smoothed rate) when the labels leave nothing to learn."""
        if len(set(labels.tolist())) < 2:
            rate = (float(np.sum(labels)) + 0.5) / (len(labels) + 1.0)
            width = rows.shape[1]
            return cls(np.zeros(width), np.ones(width), np.zeros(width), logit(rate))
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        scaler = StandardScaler().fit(rows)
        model = LogisticRegression(C=regularization, max_iter=2000).fit(scaler.transform(rows), labels)
        return cls(scaler.mean_, scaler.scale_, model.coef_[0], float(model.intercept_[0]))

    def probability(self, rows: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-((rows - self.center) / self.scale @ self.coef + self.intercept)))


@dataclass(frozen=True)
class StopRule:
    """Per stage (1 to k − 1 answers so far), the fold models of P(the vote so far is right) (`now`)
    and of P(the vote of the whole route is right) (`after`)."""

    now: tuple[tuple[Logistic, ...], ...]
    after: tuple[tuple[Logistic, ...], ...]
    read_text: bool

    def gain(self, answers: Sequence[ExpertAnswer], category: str | None, reliability: Reliability) -> float:
        """How much asking the route's other experts is expected to raise the chance of a right answer
        (0 past the stages it was trained for)."""
        stage = len(answers) - 1
        if not 0 <= stage < len(self.now) or not self.now[stage]:
            return 0.0
        row = stage_features(answers, category, reliability, self.read_text)[None, :]
        after = np.mean([model.probability(row)[0] for model in self.after[stage]])
        now = np.mean([model.probability(row)[0] for model in self.now[stage]])
        return float(after - now)


@dataclass(frozen=True)
class Replay:
    """The profiling items as a cascade meets them: each item's recorded answers along its cross-fitted
    route, and at each stage its gain from the models that did not see it (NaN where the vote is decided)."""

    answers: list[list[ExpertAnswer]]
    gains: list[list[float]]


def fit_stop_rule(
    router: Router,
    outcomes: Outcomes,
    *,
    asked: Callable[[Sequence[Query], list[Route]], list[Route]] | None = None,
    vote: Vote | None = None,
    n_folds: int = 5,
    random_state: int = 0,
    regularization: float = 1.0,
) -> tuple[StopRule, Replay]:
    """The stop rule of `router`'s cascade, cross-fitted on the profiling `outcomes` (with letters),
    and the replay `coe.policy.calibrate` chooses the budget's gain on. Routes are taken as they would
    be asked (`asked`: the composition's cost cap, say); "right" means `vote` (the weighted vote) is."""
    vote = vote or WeightedVote()
    folds = fold_of(len(outcomes.items), n_folds, random_state)
    routed = cross_fitted(router, outcomes, folds)
    routes = [route for _, route, _ in routed]
    if asked is not None:
        routes = asked([outcomes.items[i] for i, _, _ in routed], routes)
    read_text = has_texts(outcomes)
    n_stages = max((len(route.experts) for route in routes), default=1) - 1
    rows: list[list[tuple[int, np.ndarray, bool, bool]]] = [[] for _ in range(n_stages)]
    answers: list[list[ExpertAnswer]] = []
    for position, ((i, _, reliability), route) in enumerate(zip(routed, routes, strict=True)):
        item = outcomes.items[i]
        recorded = recorded_answers(outcomes, i, route)
        answers.append(recorded)
        right_after = vote.fuse(item, route, recorded).choice == item.gold
        for stage in range(len(recorded) - 1):
            so_far = recorded[: stage + 1]
            if not decided(so_far, len(recorded) - len(so_far)):
                right_now = vote.fuse(item, route, so_far).choice == item.gold
                features = stage_features(so_far, item.category, reliability, read_text)
                rows[stage].append((position, features, right_now, right_after))
    gains = [[float("nan")] * max(len(a) - 1, 0) for a in answers]
    now: list[tuple[Logistic, ...]] = []
    after: list[tuple[Logistic, ...]] = []
    fold_at = np.array([folds[i] for i, _, _ in routed])
    for stage, stage_rows in enumerate(rows):
        if not stage_rows:
            now.append(())
            after.append(())
            continue
        positions = np.array([p for p, *_ in stage_rows])
        features = np.vstack([f for _, f, _, _ in stage_rows])
        labels_now, labels_after = (np.array([r[k] for r in stage_rows]) for k in (2, 3))
        fold_models = []
        for fold in sorted(set(fold_at[positions].tolist())):
            held = fold_at[positions] == fold
            train = ~held if (~held).any() else held  # a stage met in one fold only (a tiny profile)
            pair = tuple(
                Logistic.fit(features[train], labels[train], regularization) for labels in (labels_now, labels_after)
            )
            fold_models.append(pair)
            held_gains = pair[1].probability(features[held]) - pair[0].probability(features[held])
            for position, gain in zip(positions[held], held_gains, strict=True):
                gains[position][stage] = float(gain)
        now.append(tuple(pair[0] for pair in fold_models))
        after.append(tuple(pair[1] for pair in fold_models))
    return StopRule(tuple(now), tuple(after), read_text), Replay(answers, gains)
