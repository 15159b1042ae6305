"""K-shot skill scoring, after Symbolic-MoE (Chen et al., 2025): recruit experts per query by the skills
the query needs.

Profiles: on each profiling item every expert earns +1 per skill of the item when right, −1 when
wrong. A query's local score for an expert is the sum of its profile over the query's skills; its
global strength comes from the whole profile. Experts with a positive local score are kept (all,
shifted, when none is), weighted by local × normalized global, and k are drawn with a generator seeded
by the router's seed and the query id. Two global normalizations: the paper's softmax with temperature
τ over each expert's mean profile (±1 per skill occurrence), and the released code's shift-and-square
of the summed profile (x − min + 1, raised to 1/τ). Optionally, experts recruited for under
`prune_below` of the profiling items are dropped, as the released code does on its test batch (here on
the profiling items, so a route never depends on its batch).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Self

import numpy as np

from coe.embed import Encoder
from coe.outcomes import Outcomes
from coe.routers.base import Pick, Router, penalized, query_rng, top_k
from coe.schema import Query
from coe.skills import EmbeddingAnnotator, SkillAnnotator, bundled_taxonomy

Weighting = Literal["softmax", "shift-square"]
PRIOR_ITEMS = 10.0


def skill_profile(skills: Sequence[Sequence[str]], correct: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Skill names, the (n_skills, n_experts) ±1 sums, and how many measured outcomes each sums."""
    names = sorted({skill for item_skills in skills for skill in item_skills})
    row = {name: i for i, name in enumerate(names)}
    known = ~np.isnan(correct)
    signed = np.where(known, 2.0 * np.nan_to_num(correct) - 1.0, 0.0)
    profile = np.zeros((len(names), correct.shape[1]))
    measured = np.zeros((len(names), correct.shape[1]))
    for item_skills, outcome, seen in zip(skills, signed, known, strict=True):
        for skill in set(item_skills):
            profile[row[skill]] += outcome
            measured[row[skill]] += seen
    return names, profile, measured


def global_strength(profile: np.ndarray, n_occurrences: int, weighting: Weighting, temperature: float) -> np.ndarray:
    """Each expert's share of global competence (sums to 1)."""
    if weighting == "softmax":
        mean = profile.sum(axis=0) / max(n_occurrences, 1)
        scaled = np.exp((mean - mean.max()) / temperature)
        return scaled / scaled.sum()
    total = profile.sum(axis=0)
    shifted = total - total.min() + 1 if total.min() < 0 else total
    powered = np.power(np.maximum(shifted, 0.0), 1.0 / temperature)
    return powered / powered.sum() if powered.sum() > 0 else np.full(len(total), 1.0 / len(total))


def recruit_weights(local: np.ndarray, strength: np.ndarray) -> np.ndarray:
    """Per-row draw probabilities: positive local scores × strength; all experts, shifted, when none is;
    the local scores alone where no expert has any strength (no priors, no profile)."""
    positive = local > 0
    none = ~positive.any(axis=1, keepdims=True)
    shifted = local - local.min(axis=1, keepdims=True) + 1
    kept = np.where(none, shifted, np.where(positive, local, 0.0))
    weights = kept * strength
    weights = np.where(weights.sum(axis=1, keepdims=True) > 0, weights, kept)
    return weights / weights.sum(axis=1, keepdims=True)


class SkillRouter(Router):
    """Symbolic-MoE's skill-based recruiting. A Route's scores are each drawn expert's accuracy on the
    profiled items sharing the query's skills, shrunk toward its overall accuracy (times its draws:
    drawn with replacement, a route lists each expert once and may list fewer than k)."""

    name = "skill"

    def __init__(
        self,
        *,
        k: int = 3,
        weighting: Weighting = "softmax",
        temperature: float = 0.5,
        replace: bool = False,
        prune_below: float = 0.0,
        cost_weight: float = 0.0,
        annotator: SkillAnnotator | None = None,
        encoder: Encoder | None = None,
        random_state: int = 0,
    ) -> None:
        self.k = k
        self.weighting = weighting
        self.temperature = temperature
        self.replace = replace
        self.prune_below = prune_below
        self.cost_weight = cost_weight
        self.annotator = annotator
        self.encoder = encoder
        self.random_state = random_state

    def fit(self, outcomes: Outcomes) -> Self:
        self.experts_ = outcomes.expert_ids
        self.costs_ = outcomes.costs()
        self.annotator_ = self.annotator or EmbeddingAnnotator(bundled_taxonomy(), self.encoder or Encoder())
        item_skills = self._skills_of(outcomes.items) if not outcomes.is_empty else []
        names, self.profile_, self.measured_ = skill_profile(item_skills, outcomes.correct)
        self.overall_ = outcomes.accuracy()
        self.skill_row_ = {name: i for i, name in enumerate(names)}
        n_occurrences = sum(len(set(skills)) for skills in item_skills)
        if outcomes.is_empty:
            self.strength_ = outcomes.accuracy() / max(outcomes.accuracy().sum(), 1e-9)
        else:
            self.strength_ = global_strength(self.profile_, n_occurrences, self.weighting, self.temperature)
        self.active_ = np.ones(len(self.experts_), dtype=bool)
        if self.prune_below > 0 and item_skills:
            self.active_ = self._frequent_experts(outcomes.items, item_skills)
        return self

    def _skills_of(self, queries: Sequence[Query]) -> list[tuple[str, ...]]:
        """Each query's own skills, annotated (in one batch) where it has none."""
        missing = [i for i, query in enumerate(queries) if not query.skills]
        if not missing:
            return [query.skills for query in queries]
        annotated = dict(zip(missing, self.annotator_.annotate([queries[i] for i in missing]), strict=True))
        return [annotated.get(i, query.skills) for i, query in enumerate(queries)]

    def _frequent_experts(self, items: Sequence[Query], item_skills: list[tuple[str, ...]]) -> np.ndarray:
        """Experts recruited for at least `prune_below` of the profiling items (at least k kept)."""
        local, _ = self._local(item_skills)
        draws = self._draw(items, recruit_weights(local, self.strength_), self.k, np.ones(len(self.experts_), bool))
        counts = np.zeros(len(self.experts_))
        for picked, _ in draws:
            counts[picked] += 1
        share = counts / max(len(items), 1)
        keep = share >= self.prune_below
        keep[top_k(share, min(self.k, len(share)))] = True
        return keep

    def _local(self, skills: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
        """Per query and expert: the profile summed over the query's profiled skills, and how many
        measured outcomes that sum covers."""
        local = np.zeros((len(skills), len(self.experts_)))
        measured = np.zeros_like(local)
        for i, query_skills in enumerate(skills):
            rows = [self.skill_row_[s] for s in dict.fromkeys(query_skills) if s in self.skill_row_]
            local[i] = self.profile_[rows].sum(axis=0)
            measured[i] = self.measured_[rows].sum(axis=0)
        return local, measured

    def _draw(
        self, queries: Sequence[Query], probabilities: np.ndarray, k: int, active: np.ndarray
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query: the drawn expert indices (distinct, most drawn first) and how often each was drawn."""
        drawn = []
        for query, row in zip(queries, probabilities, strict=True):
            wanted = np.maximum(penalized(row, self.costs_, self.cost_weight), 0.0) * active
            if wanted.sum() <= 0:
                wanted = active * (row + 1e-12)
            p = wanted / wanted.sum()
            rng = query_rng(self.random_state, query.id)
            if self.replace:
                experts, counts = np.unique(rng.choice(len(p), size=k, replace=True, p=p), return_counts=True)
                order = np.argsort(-counts, kind="stable")
                drawn.append((experts[order], counts[order].astype(float)))
                continue
            picks = rng.choice(len(p), size=min(k, int(np.count_nonzero(p))), replace=False, p=p)
            fill = [i for i in top_k(active * (self.strength_ + 1e-12), len(p)) if i not in picks and active[i]]
            picks = np.concatenate([picks, fill[: max(0, k - len(picks))]]).astype(int)
            drawn.append((picks, np.ones(len(picks))))
        return drawn

    def _route(self, queries: list[Query]) -> list[Pick]:
        skills = self._skills_of(queries) if queries else []
        local, measured = self._local(skills)
        # the vote weight: accuracy on the profiled items sharing the query's skills, shrunk toward
        # the overall accuracy by PRIOR_ITEMS pseudo-items (few items share a fine skill)
        hits = (local + measured) / 2
        accuracy = (hits + PRIOR_ITEMS * self.overall_) / (measured + PRIOR_ITEMS)
        draws = self._draw(queries, recruit_weights(local, self.strength_), self.k, self.active_)
        routes = []
        for i, (picked, counts) in enumerate(draws):
            known = [s for s in skills[i] if s in self.skill_row_]
            reason = (
                f"skills {', '.join(skills[i]) or '(none)'}"
                f" ({len(known)} profiled); drew {len(picked)} by local × global ({self.weighting})"
            )
            rest = np.setdiff1d(top_k(accuracy[i], len(self.experts_)), picked, assume_unique=True)
            routes.append(Pick(picked, accuracy[i, picked] * counts, reason, rest, accuracy[i, rest]))
        return routes
