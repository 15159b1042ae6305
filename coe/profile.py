"""Profiling: run every expert of a pool over the profiling items (expert-batched), score their
answers, and keep the outcomes in the database with the pool's model identity, the split and the date.

Profiles are measured, never declared: routers fit on these outcomes (per item, per category, per
skill); a second run with the same inputs reuses the stored profile instead of running the experts.
A stored profile is public: found by id or by name (`coe profiles list`) and read back as `Outcomes`
for any pool whose experts it measured.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from coe.answers import question_prompt, read_choice
from coe.datasets import stored_error
from coe.errors import ProfileError
from coe.outcomes import Outcomes
from coe.registry import Registry
from coe.scheduler import Request, Scheduler
from coe.schema import ExpertSpec, Query
from coe.skills import SkillAnnotator
from coe.store import ProfileItem, ProfileOutcome, ProfileRecord, ProfileStore, Store
from coe.types import Generation, GenerationParams, ProgressCallback


@dataclass(frozen=True)
class Profile:
    record: ProfileRecord
    outcomes: Outcomes
    reused: bool
    """True when the stored profile was reused and no expert ran."""


def expert_fingerprint(expert: ExpertSpec) -> str:
    """The model identity a profile belongs to: the hash of the expert's full spec, less where it runs."""
    return hashlib.sha256(expert.model_dump_json(exclude={"resources"}).encode()).hexdigest()[:16]


def profile_key(bench: str, items: Sequence[Query], experts: Sequence[ExpertSpec], params: GenerationParams) -> str:
    """Equal inputs, equal key: benchmark, exact items, experts' identities, generation settings."""
    payload = {
        "bench": bench,
        "items": hashlib.sha256("\n".join(q.id for q in items).encode()).hexdigest(),
        "experts": {e.id: expert_fingerprint(e) for e in experts},
        "params": [params.max_tokens, params.temperature, params.seed, list(params.stop)],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def measure(
    registry: Registry,
    items: Sequence[Query],
    scheduler: Scheduler,
    params: GenerationParams,
    on_progress: ProgressCallback | None = None,
) -> tuple[np.ndarray, list[list[Generation]]]:
    """Every expert on every item: the correctness matrix (a failed generation counts as wrong) and outputs."""
    experts = registry.experts
    requests = [Request(expert, question_prompt(item)) for item in items for expert in experts]
    outputs, _ = scheduler.run(requests, params, on_progress)
    rows = [outputs[i * len(experts) : (i + 1) * len(experts)] for i in range(len(items))]
    correct = np.full((len(items), len(experts)), np.nan)
    for i, (item, generations) in enumerate(zip(items, rows, strict=True)):
        n_choices = len(item.choices or ())
        for j, generation in enumerate(generations):
            if not generation.ok:
                correct[i, j] = 0.0
            elif item.gold is not None and n_choices:
                correct[i, j] = float(read_choice(generation.text, n_choices).letter == item.gold)
    return correct, rows


def profile(
    store: Store,
    registry: Registry,
    *,
    bench: str,
    split: str,
    items: Sequence[Query],
    scheduler: Scheduler,
    params: GenerationParams,
    annotator: SkillAnnotator | None = None,
    keep_text: bool = True,
    reuse: bool = True,
    chunk_size: int = 100,
    on_progress: ProgressCallback | None = None,
) -> Profile:
    """Measure the pool on `items` and store it chunk by chunk; a complete stored profile of the same
    inputs is reused, an interrupted one is continued."""
    profiles = ProfileStore(store)
    key = profile_key(bench, items, registry.experts, params)
    if not reuse:
        profiles.remove(key)
    record = profiles.find(key)
    reused = record is not None and record.complete
    if record is None or not record.complete:
        record = profiles.open(
            key=key,
            bench=bench,
            split=split,
            pool=registry.source,
            experts={e.id: expert_fingerprint(e) for e in registry.experts},
            params={"max_tokens": params.max_tokens, "temperature": params.temperature, "seed": params.seed},
        )
        done = {item.item_id for item in profiles.items(record.id)}
        if done and on_progress:
            on_progress(len(done) * len(registry))
        todo = [item for item in items if item.id not in done]
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start : start + chunk_size]
            _profile_chunk(profiles, record.id, registry, chunk, scheduler, params, annotator, keep_text, on_progress)
        record = profiles.finish(record.id)
    return Profile(record, stored_outcomes(store, record, registry, items), reused=reused)


def _profile_chunk(
    profiles: ProfileStore,
    profile_id: int,
    registry: Registry,
    chunk: Sequence[Query],
    scheduler: Scheduler,
    params: GenerationParams,
    annotator: SkillAnnotator | None,
    keep_text: bool,
    on_progress: ProgressCallback | None,
) -> None:
    correct, outputs = measure(registry, chunk, scheduler, params, on_progress)
    skills = annotator.annotate(chunk) if annotator is not None else [item.skills for item in chunk]
    outcomes = [
        ProfileOutcome(
            item_id=item.id,
            expert_id=expert.id,
            choice=read_choice(g.text, len(item.choices or ())).letter if g.ok and item.choices else None,
            correct=None if np.isnan(correct[i, j]) or not g.ok else bool(correct[i, j]),
            text=g.text if keep_text and not scheduler.backend_for(expert).capabilities.recorded else None,
            n_tokens=g.n_prompt_tokens + g.n_completion_tokens,
            error=stored_error(g.error, redact=not keep_text),
        )
        for i, item in enumerate(chunk)
        for j, (expert, g) in enumerate(zip(registry.experts, outputs[i], strict=True))
    ]
    items = [ProfileItem(item.id, item.category, tuple(s)) for item, s in zip(chunk, skills, strict=True)]
    profiles.add(profile_id, items, outcomes)


def profile_name(record: ProfileRecord) -> str:
    """A profile's readable name: `<pool>/<bench>/<split>` (pool: the registry file's stem or the
    imported pool's name). Profiles of one name differ only in generation settings or experts' specs;
    the name finds the newest complete one."""
    pool = record.pool.removeprefix("pool:") if record.pool.startswith("pool:") else Path(record.pool).stem
    return f"{pool}/{record.bench}/{record.split}"


def find_profile(store: Store, ref: int | str) -> ProfileRecord:
    """A complete stored profile by id or by name; an unknown one lists what is stored."""
    records = [record for record in ProfileStore(store).all() if record.complete]
    text = str(ref)
    found = [r for r in records if str(r.id) == text] or [r for r in records if profile_name(r) == text]
    if not found:
        known = ", ".join(f"{r.id} ({profile_name(r)})" for r in records) or "none"
        raise ProfileError(f"no stored profile {text!r}; stored: {known}; make one with `coe profile`")
    return found[-1]


def newest_profile(store: Store, registry: Registry) -> ProfileRecord | None:
    """The newest complete stored profile that measured this pool's experts as they are; None if none."""
    records = [record for record in ProfileStore(store).all() if record.complete]
    for record in sorted(records, key=lambda r: r.created_at, reverse=True):
        if not _coverage_problems(record, registry):
            return record
    return None


def check_profile_covers(record: ProfileRecord, registry: Registry) -> None:
    """The profile measured these very experts: every expert of the pool, each with an unchanged spec."""
    problems = _coverage_problems(record, registry)
    if problems:
        raise ProfileError(
            f"profile {record.id} ({profile_name(record)}) does not fit pool {registry.source}: "
            f"it {' and '.join(problems)}; profile this pool with `coe profile`"
        )


def _coverage_problems(record: ProfileRecord, registry: Registry) -> list[str]:
    missing = [e.id for e in registry.experts if e.id not in record.experts]
    changed = [
        e.id for e in registry.experts if e.id in record.experts and record.experts[e.id] != expert_fingerprint(e)
    ]
    return ([f"never measured {', '.join(missing)}"] if missing else []) + (
        [f"measured {', '.join(changed)} before their specs changed"] if changed else []
    )


def stored_outcomes(store: Store, record: ProfileRecord, registry: Registry, items: Sequence[Query]) -> Outcomes:
    """A stored profile as the correctness matrix of `registry`'s experts on `items` (the profile's own
    items, with their texts: routers embed them); skills as annotated when profiled."""
    profiles = ProfileStore(store)
    skills = {item.item_id: item.skills for item in profiles.items(record.id)}
    column = {expert.id: j for j, expert in enumerate(registry.experts)}
    row = {item.id: i for i, item in enumerate(items)}
    correct = np.full((len(items), len(column)), np.nan)
    failed = np.zeros(correct.shape, dtype=bool)
    letters = np.full(correct.shape, "", dtype=object)
    guessed = np.zeros(correct.shape, dtype=bool)
    texts = np.full(correct.shape, "", dtype=object)
    for outcome in profiles.outcomes(record.id):
        if outcome.item_id not in row or outcome.expert_id not in column:
            continue
        cell = row[outcome.item_id], column[outcome.expert_id]
        letters[cell], texts[cell] = outcome.choice or "", outcome.text or ""
        if outcome.text is not None and outcome.choice:
            guessed[cell] = read_choice(outcome.text, len(items[cell[0]].choices or ())).guessed
        if outcome.error is not None:
            correct[cell], failed[cell] = 0.0, True
        elif outcome.correct is not None:
            correct[cell] = float(outcome.correct)
    annotated = tuple(item.model_copy(update={"skills": skills.get(item.id, item.skills)}) for item in items)
    return Outcomes(tuple(registry.experts), annotated, correct, failed, letters, guessed, texts)


def with_recorded_answers(outcomes: Outcomes, scheduler: Scheduler, params: GenerationParams) -> Outcomes:
    """The outcomes with recorded experts' letters and texts read again from their recordings (at no
    inference cost): a profile keeps no text for them, so whether a letter was guessed is known only this way."""
    recorded = [j for j, e in enumerate(outcomes.experts) if scheduler.backend_for(e).capabilities.recorded]
    if not recorded or outcomes.is_empty:
        return outcomes
    letters = np.full(outcomes.correct.shape, "", dtype=object) if outcomes.letters is None else outcomes.letters.copy()
    guessed = np.zeros(letters.shape, dtype=bool) if outcomes.guessed is None else outcomes.guessed.copy()
    texts = np.full(letters.shape, "", dtype=object) if outcomes.texts is None else outcomes.texts.copy()
    pairs = [(i, j) for i in range(len(outcomes.items)) for j in recorded]
    requests = [Request(outcomes.experts[j], question_prompt(outcomes.items[i])) for i, j in pairs]
    generations, _ = scheduler.run(requests, params)
    for (i, j), generation in zip(pairs, generations, strict=True):
        n_choices = len(outcomes.items[i].choices or ())
        reading = read_choice(generation.text, n_choices) if generation.ok and n_choices else None
        letters[i, j] = (reading.letter or "") if reading else ""
        guessed[i, j] = reading.guessed if reading else False
        texts[i, j] = generation.text if generation.ok else ""
    return replace(outcomes, letters=letters, guessed=guessed, texts=texts)
