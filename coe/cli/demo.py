"""`coe demo`: the pipeline on real CPU models, then what routing is for, on recorded answers.

Part one asks the embedded pool 14 MMLU-Pro validation questions (one per category) with real
generations. Part two routes a stratified sample of MMLU-Pro test questions over the reference pool of
8 recorded models (no inference): which experts each category goes to, and the routed accuracy beside
the best single expert, the all-experts vote and the oracle ceiling.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from coe.aggregate import WeightedVote
from coe.cli.ask import JsonOption, PoolOption, composition_spec
from coe.cli.common import builder, out, progress, settings
from coe.compose import CompositionSpec, RouterSpec, SplitProfile
from coe.composer import BatchResult, Composer
from coe.datasets import load_mmlu_pro
from coe.outcomes import Outcomes
from coe.profile import measure
from coe.schema import Answer, Query
from coe.splits import stratified_sample

ROUTED = "classifier"
"""The demo's router: query → category → that category's best experts (Composition of Experts)."""


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


def demo(
    pool: PoolOption = None,
    max_tokens: Annotated[int, typer.Option(help="Generation budget per expert (live part).")] = 256,
    routed: Annotated[int, typer.Option(help="Test questions routed over recorded answers (0: skip part two).")] = 300,
    as_json: JsonOption = False,
) -> None:
    """Part one: 14 MMLU-Pro questions through real CPU models. Part two: routing over 8 recorded models."""
    queries = one_per_category(load_mmlu_pro("validation", settings().data_dir))
    spec = composition_spec(None, pool, None, None, None, None, max_tokens)
    with builder().compose(spec) as composer:
        expert_ids = list(composer.registry)
        with progress("demo: expert answers", total=len(queries) * len(expert_ids)) as advance:
            result = composer.run(queries, advance)
    if as_json:
        out.print_json(json.dumps([answer.model_dump(mode="json") for answer in result.answers]))
        return
    out.print(demo_table(queries, result.answers, expert_ids))
    n_correct = sum(bool(a.correct) for a in result.answers)
    out.print(
        f"accuracy {n_correct}/{len(queries)} = {n_correct / len(queries):.3f}   "
        f"model loads {result.stats.n_loads} ({result.stats.load_s:.1f} s)   "
        f"wall time {result.stats.wall_s:.1f} s   "
        f"tokens {result.stats.n_prompt_tokens} in / {result.stats.n_completion_tokens} out"
    )
    out.print("(these two tiny models answer near chance: part one shows the pipeline runs on real models)\n")
    if routed:
        routing_demo(routed)


def routing_demo(n_questions: int) -> None:
    """Route `n_questions` stratified test questions over the reference pool and compare with the baselines."""
    spec = CompositionSpec.load(ROUTED)
    assert isinstance(spec.profile, SplitProfile)
    compositions = builder()
    registry = compositions.pool(spec.pool)
    params = spec.generation.params()
    outcomes, bench = compositions.outcomes(spec.profile, registry, params, annotate=False)
    by_id = {query.id: query for query in compositions.benchmark(spec.profile.bench)}
    split = compositions.split(spec.profile)
    test = [by_id[i] for i in stratified_sample([by_id[i] for i in split.test_ids], n_questions, spec.seed)]
    routers = {
        name: compositions.router(RouterSpec(name=name), outcomes, k=spec.k, seed=spec.seed, bench=bench)
        for name in (ROUTED, "best-single", "all")
    }
    correct, _ = measure(registry, test, compositions.scheduler, params)
    routers["oracle"] = compositions.router(
        RouterSpec(name="oracle"), Outcomes(tuple(registry.experts), tuple(test), correct), k=1, seed=0, bench=bench
    )
    composer = Composer(registry, backends=compositions.backends, scheduler=compositions.scheduler, params=params)
    results = composer.compare(test, routers, {"weighted": WeightedVote()})
    by_router = {router: result for (router, _), result in results.items()}
    out.print(category_table(test, by_router))
    accuracy = {name: _accuracy(result.answers) for name, result in by_router.items()}
    best = by_router["best-single"].answers[0].experts[0]
    out.print(
        Text.assemble(
            ("routed ", "bold"),
            f"{accuracy[ROUTED]:.1%} ({ROUTED} router, {spec.k} experts, weighted vote)   ",
            ("best single ", "bold"),
            f"{accuracy['best-single']:.1%} ({best})   ",
            ("all 8 voting ", "bold"),
            f"{accuracy['all']:.1%}   ",
            ("oracle ceiling ", "bold"),
            f"{accuracy['oracle']:.1%}",
        )
    )
    out.print(
        f"on {len(test)} MMLU-Pro test questions answered from 8 real models' recorded responses, routing each "
        f"category to its strongest experts scores {100 * (accuracy[ROUTED] - accuracy['best-single']):+.1f} points "
        "against the best single model; the oracle (an expert known to be right) is the ceiling no router passes"
    )


def category_table(test: list[Query], results: dict[str, BatchResult]) -> Table:
    """Per category: the experts the router sends it to (how often), and routed against best-single accuracy."""
    sent: dict[str, Counter[str]] = defaultdict(Counter)
    right: dict[tuple[str, str], list[bool]] = defaultdict(list)
    for router, result in results.items():
        for query, answer in zip(test, result.answers, strict=True):
            right[router, query.category or ""].append(bool(answer.correct))
            if router == ROUTED:
                sent[query.category or ""].update(answer.experts)
    table = Table(title=f"where the {ROUTED} router sends each category (recorded answers, no inference)")
    for column in ("category", "questions", "experts chosen (share of its questions)", "routed", "best single"):
        table.add_column(column, justify="left" if column in ("category", "experts chosen") else "right")
    for category in sorted(sent):
        n = len(right[ROUTED, category])
        chosen = ", ".join(f"{expert} {count / n:.0%}" for expert, count in sent[category].most_common(3))
        routed, single = (sum(right[r, category]) / n for r in (ROUTED, "best-single"))
        table.add_row(category, str(n), chosen, f"{routed:.0%}", f"{single:.0%}")
    return table


def _accuracy(answers: list[Answer]) -> float:
    return sum(bool(answer.correct) for answer in answers) / max(len(answers), 1)


def one_per_category(queries: list[Query]) -> list[Query]:
    """The first query of each category, in order of first appearance."""
    seen: dict[str, Query] = {}
    for query in queries:
        seen.setdefault(query.category or "", query)
    return list(seen.values())


def demo_table(queries: list[Query], answers: list[Answer], expert_ids: list[str]) -> Table:
    table = Table(title="coe demo: MMLU-Pro validation, one question per category")
    for column in ("id", "category", "experts chosen", *expert_ids, "final", "gold", "correct"):
        table.add_column(column)
    for query, answer in zip(queries, answers, strict=True):
        letters = {a.expert: (a.choice or ("error" if a.error else "-")) for a in answer.expert_answers}
        table.add_row(
            query.id,
            query.category or "",
            ", ".join(answer.experts),
            *(letters.get(e, "") for e in expert_ids),
            answer.choice or "-",
            query.gold or "",
            Text("yes", style="green") if answer.correct else Text("no", style="red"),
        )
    return table
