"""Task-level K-shot selection, after "Leveraging Open Knowledge for Advancing Task Expertise in Large
Language Models" (Yang et al., 2024), which picks LoRA experts for a task by their results on K labelled
examples of it: every expert is run on the K examples, ranked by K-shot accuracy, and the whole task
goes to the top k.

A task is the category the user declares (`Query.category`); the router is fitted on the outcomes of
the examples of one or several tasks and routes each query by its task, a query of an unseen task by
all examples pooled. K is small (the paper: 5 to 50), so accuracies tie often; ties go to diversity,
then agreement (`rank_experts`). The paper's other signals, reasoning perplexity and parameter
diversity, need model internals that a recorded or remote expert does not expose.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self

import numpy as np

from coe.outcomes import Outcomes
from coe.routers.base import Pick, Router, penalized
from coe.schema import Query

POOLED = ""
"""The task key of all examples pooled: what a query of an unseen (or no) task gets."""


def draw_examples(items: Sequence[Query], shots: int, seed: int, category: str | None = None) -> list[Query]:
    """`shots` items drawn without replacement (seeded), in their given order; all when fewer. With a
    `category`, from that category's items only; with none, `shots` from each category."""
    groups: dict[str, list[Query]] = {}
    for item in items:
        if category is None or item.category == category:
            groups.setdefault(item.category or "", []).append(item)
    rng = np.random.default_rng(seed)
    drawn: set[str] = set()
    for name in sorted(groups):
        group = groups[name]
        drawn.update(group[i].id for i in rng.choice(len(group), size=min(shots, len(group)), replace=False))
    return [item for item in items if item.id in drawn]


def rank_experts(correct: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Expert indices best first by `scores` (K-shot accuracy − λ·cost). Ties go to the expert right on
    most examples that the experts ranked before it missed (diversity: the group covers more), then to
    the one whose right and wrong answers agree most with the other experts' (a solver of the examples
    rather than a lucky guesser), then to the lower index."""
    right = np.nan_to_num(correct) == 1
    n_experts = right.shape[1]
    same = (right[:, :, None] == right[:, None, :]).mean(axis=0) if len(right) else np.zeros((n_experts, n_experts))
    agreement = (same.sum(axis=1) - np.diag(same)) / max(n_experts - 1, 1)
    covered = np.zeros(len(right), dtype=bool)
    order: list[int] = []
    remaining = list(range(n_experts))
    while remaining:
        best = max(
            remaining,
            key=lambda e: (round(float(scores[e]), 9), int(np.sum(right[:, e] & ~covered)), agreement[e], -e),
        )
        order.append(best)
        remaining.remove(best)
        covered |= right[:, best]
    return np.array(order, dtype=int)


class KShotRouter(Router):
    """Every query of a task to the task's top-k experts by K-shot accuracy − λ·cost."""

    name = "kshot"

    def __init__(self, *, k: int = 3, cost_weight: float = 0.0) -> None:
        self.k = k
        self.cost_weight = cost_weight

    def fit(self, outcomes: Outcomes) -> Self:
        """Rank the experts per task on `outcomes`: the K labelled examples of each task."""
        self.experts_ = outcomes.expert_ids
        costs = outcomes.costs()
        tasks: dict[str, list[int]] = {POOLED: list(range(len(outcomes.items)))}
        for row, item in enumerate(outcomes.items):
            if item.category:
                tasks.setdefault(item.category, []).append(row)
        self.tasks_: dict[str, tuple[np.ndarray, np.ndarray, int]] = {}
        """task -> (experts best first, K-shot accuracy per expert, K)."""
        for task, rows in tasks.items():
            examples = outcomes.subset(rows)
            accuracy = examples.accuracy()
            ranking = rank_experts(examples.correct, penalized(accuracy, costs, self.cost_weight))
            self.tasks_[task] = (ranking, accuracy, len(rows))
        return self

    def _route(self, queries: list[Query]) -> list[Pick]:
        picks = []
        for query in queries:
            task = query.category if query.category in self.tasks_ else POOLED
            ranking, accuracy, shots = self.tasks_[task]
            k = min(self.k, len(ranking))
            estimates = ", ".join(f"{self.experts_[i]} {accuracy[i]:.2f}" for i in ranking[:k])
            if shots == 0:
                basis = "declared priors (no examples)"
            elif task == POOLED:
                basis = f"all {shots} examples (task {query.category or 'not given'} has none)"
            else:
                basis = f"{shots} examples of task {task}"
            picks.append(Pick.ranked(ranking, accuracy, k, f"K-shot accuracy on {basis}: {estimates}"))
        return picks
