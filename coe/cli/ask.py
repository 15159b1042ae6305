"""`coe ask` (one question) and `coe demo` (14 MMLU-Pro questions through the embedded pool)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from coe.cli.common import backends, load_pool, out, progress, settings
from coe.composer import Composer
from coe.evals.datasets import load_mmlu_pro
from coe.schema import Answer, Query
from coe.types import GenerationParams

PoolOption = Annotated[
    Path | None, typer.Option("--pool", help="Registry file of the expert pool (default: the embedded pool).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the answer(s) as JSON.")]


def register(app: typer.Typer) -> None:
    app.command("ask")(ask)
    app.command("demo")(demo)


def ask(
    question: Annotated[str, typer.Argument(help="The question.")],
    choices: Annotated[
        str | None, typer.Option("--choices", help="Comma-separated options: multiple choice A, B, ...")
    ] = None,
    pool: PoolOption = None,
    max_tokens: Annotated[int, typer.Option(help="Generation budget per expert.")] = 384,
    as_json: JsonOption = False,
) -> None:
    """Answer one question with every expert of the pool and a majority vote."""
    options = [c.strip() for c in choices.split(",")] if choices else None
    query = Query(id="q0", text=question, choices=tuple(options) if options else None)
    registry = load_pool(pool)
    with (
        Composer(registry, backends=backends(), params=_params(max_tokens)) as composer,
        progress("asking experts", total=len(registry)) as advance,
    ):
        result = composer.run([query], advance)
    answer = result.answers[0]
    if as_json:
        out.print_json(answer.model_dump_json())
        return
    for expert_answer in answer.expert_answers:
        out.print(f"[bold]{expert_answer.expert}[/] → {expert_answer.choice or '-'}: {_one_line(expert_answer.text)}")
    out.print(f"[bold green]answer:[/] {answer.choice or _one_line(answer.answer)}   ({answer.route.reason})")


def demo(
    pool: PoolOption = None,
    max_tokens: Annotated[int, typer.Option(help="Generation budget per expert.")] = 256,
    as_json: JsonOption = False,
) -> None:
    """14 MMLU-Pro validation questions (one per category) through the pool, with a table."""
    queries = one_per_category(load_mmlu_pro("validation", settings().data_dir))
    registry = load_pool(pool)
    expert_ids = list(registry)
    with (
        Composer(registry, backends=backends(), params=_params(max_tokens)) as composer,
        progress("demo: expert answers", total=len(queries) * len(expert_ids)) as advance,
    ):
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
            "[green]yes[/]" if answer.correct else "[red]no[/]",
        )
    return table


def _params(max_tokens: int) -> GenerationParams:
    return GenerationParams(max_tokens=max_tokens, seed=settings().seed)


def _one_line(text: str, width: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"
