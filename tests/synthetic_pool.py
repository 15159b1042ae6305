"""Small recorded pools where the right answer is known: each expert's responses are written as a
replay file by a rule (stated "the answer is (X)", a guessed stray letter, or no record), so the
real composer, scheduler and replay backend run on them."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from coe.backends.replay import ReplayBackend
from coe.outcomes import Outcomes
from coe.profile import measure, with_recorded_answers
from coe.registry import Registry
from coe.scheduler import Scheduler
from coe.schema import ExpertSpec, Query, ReplayBackendSpec
from coe.types import GenerationParams

LETTERS = "ABCD"
PARAMS = GenerationParams()
Rule = Callable[[Query, np.random.Generator], str | None]
"""An expert's response to a query (None: no record, a failed answer)."""


def queries(
    n: int,
    seed: int,
    categories: tuple[str, ...] = ("math", "law"),
    choices: tuple[str, ...] | Callable[[str, np.random.Generator], tuple[str, ...]] = ("w", "x", "y", "z"),
) -> list[Query]:
    """`n` four-option queries with random gold letters; `choices` may write each query's options from
    its gold letter."""
    rng = np.random.default_rng(seed)
    golds = [LETTERS[rng.integers(4)] for _ in range(n)]
    return [
        Query(
            id=str(seed * 100_000 + i),
            text=f"question {i}",
            choices=choices(gold, rng) if callable(choices) else choices,
            gold=gold,
            category=categories[i % len(categories)],
        )
        for i, gold in enumerate(golds)
    ]


def stated(letter: str) -> str:
    return f"Let me think. the answer is ({letter})"


def guessed(letter: str) -> str:
    return f"I am not sure, maybe {letter} or so."


def wrong(query: Query, rng: np.random.Generator) -> str:
    return str(rng.choice([letter for letter in LETTERS if letter != query.gold]))


def pool(tmp_path: Path, items: list[Query], rules: dict[str, Rule], seed: int = 0) -> Registry:
    """One replay expert per rule, recorded on `items`, in the rules' order."""
    rng = np.random.default_rng(seed)
    experts = []
    for name, rule in rules.items():
        path = tmp_path / f"{name}.jsonl.gz"
        with gzip.open(path, "wt", encoding="utf-8") as out:
            for query in items:
                response = rule(query, rng)
                if response is not None:
                    out.write(json.dumps({"question_id": int(query.id), "response": response}) + "\n")
        experts.append(ExpertSpec(id=name, base=name, backend=ReplayBackendSpec(responses=path)))
    return Registry(experts, source=str(tmp_path))


def scheduler() -> Scheduler:
    return Scheduler({"replay": ReplayBackend()})


def profiled(registry: Registry, items: list[Query], runner: Scheduler) -> Outcomes:
    """Every expert on the profiling items, with their letters, as `coe profile` would give them."""
    correct, _ = measure(registry, items, runner, PARAMS)
    return with_recorded_answers(Outcomes(tuple(registry.experts), tuple(items), correct), runner, PARAMS)
