"""Who got what right: the correctness matrix every router fits on.

Rows are profiling items, columns experts; 1 correct, 0 wrong, NaN not run. A failed generation (no
answer) counts as wrong, so an expert that often fails is not mistaken for a strong one; `failed`
keeps which they were, so its availability can be modelled apart from its accuracy. Profiles
(per-skill, per-category, overall accuracy) are views of it, so they are measured, never declared; an
empty matrix falls back on the registry's declared priors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from coe.schema import ExpertSpec, Query


@dataclass(frozen=True)
class Outcomes:
    experts: tuple[ExpertSpec, ...]
    items: tuple[Query, ...]
    correct: np.ndarray
    """float array (n_items, n_experts): 1 correct, 0 wrong (or failed), NaN not run."""
    failed: np.ndarray | None = None
    """bool array like `correct`: the expert failed to answer (counted as wrong in `correct`)."""
    letters: np.ndarray | None = None
    """str array like `correct`: the letter each expert answered ("" for none); what a learned
    aggregator fits on, with `guessed`."""
    guessed: np.ndarray | None = None
    """bool array like `correct`: the letter was only guessed (a stray letter the response never states)."""
    texts: np.ndarray | None = None
    """str array like `correct`: each expert's response ("" for none); what a learned stop rule reads
    (its length, its hedges) besides the letters."""

    def __post_init__(self) -> None:
        expected = (len(self.items), len(self.experts))
        if self.correct.shape != expected:
            raise ValueError(f"correct has shape {self.correct.shape}, expected {expected}")
        for name in ("failed", "letters", "guessed", "texts"):
            array = getattr(self, name)
            if array is not None and array.shape != expected:
                raise ValueError(f"{name} has shape {array.shape}, expected {expected}")

    @classmethod
    def from_priors(cls, experts: Sequence[ExpertSpec]) -> Outcomes:
        """No measurements: routers fall back on the registry's declared priors."""
        return cls(tuple(experts), (), np.zeros((0, len(experts))))

    @property
    def expert_ids(self) -> list[str]:
        return [expert.id for expert in self.experts]

    @property
    def is_empty(self) -> bool:
        return len(self.items) == 0

    def accuracy(self) -> np.ndarray:
        """Overall accuracy per expert; the declared `overall` prior when nothing was measured."""
        if self.is_empty:
            return np.array([expert.skills.get("overall", 0.0) for expert in self.experts], dtype=float)
        return _nanmean(self.correct)

    def category_accuracy(self) -> dict[str, np.ndarray]:
        """Accuracy per expert within each category; declared priors when nothing was measured."""
        if self.is_empty:
            names = {name for expert in self.experts for name in expert.skills if name != "overall"}
            return {
                name: np.array([e.skills.get(name, e.skills.get("overall", 0.0)) for e in self.experts])
                for name in sorted(names)
            }
        categories = np.array([item.category or "" for item in self.items])
        return {category: _nanmean(self.correct[categories == category]) for category in sorted(set(categories))}

    def failure_rate(self) -> np.ndarray:
        """Per expert: the share of its profiled items it failed to answer."""
        if self.failed is None or self.is_empty:
            return np.zeros(len(self.experts))
        return self.failed.mean(axis=0)

    def costs(self) -> np.ndarray:
        """USD per million tokens per expert: what `cost_weight` trades against score."""
        return np.array([expert.cost_per_mtok for expert in self.experts], dtype=float)

    def subset(self, item_indices: Sequence[int] | np.ndarray) -> Outcomes:
        index = np.asarray(item_indices, dtype=int)
        rows = [
            None if array is None else array[index] for array in (self.failed, self.letters, self.guessed, self.texts)
        ]
        return Outcomes(self.experts, tuple(self.items[i] for i in index), self.correct[index], *rows)


def _nanmean(values: np.ndarray) -> np.ndarray:
    counts = np.sum(~np.isnan(values), axis=0)
    sums = np.nansum(values, axis=0)
    return np.divide(sums, counts, out=np.zeros(values.shape[1]), where=counts > 0)
