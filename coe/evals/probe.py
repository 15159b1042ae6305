"""`coe aggregators probe`: choose the aggregator expert the Symbolic-MoE way.

From profiling outputs, build items where the experts' answers hold one correct and (up to) two
incorrect responses, shuffled; ask each candidate to synthesize them; the candidate that most often
recovers the correct answer is the aggregator, and the choice is stored for `coe eval`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from coe.aggregate import LlmSynthesis
from coe.answers import question_prompt, read_choice
from coe.errors import RunError
from coe.registry import Registry
from coe.scheduler import Request, Scheduler
from coe.schema import ExpertAnswer, ExpertChoice, ExpertSpec, Query, Route
from coe.store import ProfileStore, Store, save_aggregator_choice
from coe.types import GenerationParams


@dataclass(frozen=True)
class ProbeItem:
    query: Query
    answers: tuple[ExpertAnswer, ...]


@dataclass(frozen=True)
class ProbeResult:
    chosen: str
    scores: dict[str, float]
    n_items: int


def build_probe_items(
    items: Sequence[Query], texts: dict[tuple[str, str], str], experts: Sequence[str], *, n_items: int, seed: int
) -> list[ProbeItem]:
    """Items with one correct and up to two incorrect expert answers, in a seeded random order."""
    rng = np.random.default_rng(seed)
    built = []
    for index in rng.permutation(len(items)):
        item = items[index]
        n_choices = len(item.choices or ())
        right: list[ExpertAnswer] = []
        wrong: list[ExpertAnswer] = []
        for expert in experts:
            text = texts.get((expert, item.id))
            if text is None:
                continue
            reading = read_choice(text, n_choices)
            answer = ExpertAnswer(expert=expert, text=text, choice=reading.letter, guessed=reading.guessed)
            (right if reading.letter == item.gold else wrong).append(answer)
        if right and wrong:
            picked = [right[int(rng.integers(len(right)))], *(wrong[i] for i in rng.permutation(len(wrong))[:2])]
            built.append(ProbeItem(item, tuple(picked[i] for i in rng.permutation(len(picked)))))
        if len(built) == n_items:
            break
    return built


def probe(
    candidates: Sequence[ExpertSpec],
    probe_items: Sequence[ProbeItem],
    scheduler: Scheduler,
    params: GenerationParams,
) -> dict[str, float]:
    """Each candidate's recovery rate: how often its synthesis gives the correct letter."""
    queries = [p.query for p in probe_items]
    routes = [
        Route(
            query_id=p.query.id,
            experts=tuple(ExpertChoice(expert=a.expert, score=1.0) for a in p.answers),
            reason="aggregator probe: one correct and up to two incorrect answers",
            router="probe",
        )
        for p in probe_items
    ]
    scores = {}
    for candidate in candidates:
        verdicts = LlmSynthesis(candidate, scheduler, params).fuse_batch(
            queries, routes, [p.answers for p in probe_items]
        )
        scores[candidate.id] = float(np.mean([v.choice == q.gold for v, q in zip(verdicts, queries, strict=True)]))
    return scores


def run_probe(
    store: Store,
    registry: Registry,
    candidates: Sequence[ExpertSpec],
    *,
    bench: str,
    profile_id: int,
    items: Sequence[Query],
    scheduler: Scheduler,
    params: GenerationParams,
    n_items: int = 50,
    seed: int = 0,
    on_progress: Callable[[int], None] | None = None,
) -> ProbeResult:
    """Probe the candidates on a stored profile's outputs and store the winner for the pool."""
    texts = {
        (o.expert_id, o.item_id): o.text for o in ProfileStore(store).outcomes(profile_id, with_text=True) if o.text
    }
    missing = [(e, q) for q in items for e in registry.experts if (e.id, q.id) not in texts]
    if missing:  # recorded (replay) outputs are not stored with the profile: read them again
        outputs, _ = scheduler.run([Request(e, question_prompt(q)) for e, q in missing], params, on_progress)
        texts.update({(e.id, q.id): g.text for (e, q), g in zip(missing, outputs, strict=True) if g.ok})
    probe_items = build_probe_items(items, texts, list(registry), n_items=n_items, seed=seed)
    if not probe_items:
        raise RunError(
            "no profiling item has both a correct and an incorrect expert answer to probe with; "
            "profile more items (a larger --split) or a more varied pool"
        )
    scores = probe(candidates, probe_items, scheduler, params)
    chosen = max(scores, key=lambda expert: (scores[expert], -list(scores).index(expert)))
    save_aggregator_choice(
        store, pool=registry.source, bench=bench, expert_id=chosen, scores=scores, n_items=len(probe_items)
    )
    return ProbeResult(chosen=chosen, scores=scores, n_items=len(probe_items))
