"""`coe runs` and `coe profiles`: what evaluations and profiling stored, listed, traced and deleted."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from coe.cli.common import out, settings
from coe.errors import RunError
from coe.store import ItemTrace, RunStore, Store

runs_app = typer.Typer(help="Stored evaluation runs: list them, trace a number back to its items, delete them.")
profiles_app = typer.Typer(help="Stored profiles: what routers fit on (see `coe profile`).")


def register(app: typer.Typer) -> None:
    app.add_typer(runs_app, name="runs")
    app.add_typer(profiles_app, name="profiles")


@profiles_app.command("list")
def profiles_list() -> None:
    """Every stored profile, oldest first: use one with `--profile ID` or its name."""
    from coe.profile import profile_name
    from coe.store import ProfileStore

    profiles = ProfileStore(Store(settings().database_url))
    table = Table(title="stored profiles")
    for column in ("id", "name", "experts", "items", "max tokens", "complete", "created"):
        table.add_column(column, no_wrap=column == "name")
    for record in profiles.all():
        table.add_row(
            str(record.id),
            profile_name(record),
            str(len(record.experts)),
            str(len(profiles.items(record.id))),
            str(record.params.get("max_tokens", "")),
            "yes" if record.complete else "no (resumes on the next run)",
            f"{record.created_at:%Y-%m-%d %H:%M}",
        )
    out.print(table)


@runs_app.command("list")
def runs_list() -> None:
    """Every stored run, newest last."""
    table = Table(title="evaluation runs")
    for column in ("run id", "status", "bench", "pool", "split", "seeds", "routers", "updated"):
        table.add_column(column, no_wrap=column == "run id")
    for run in RunStore(Store(settings().database_url)).all():
        config = run.config
        table.add_row(
            run.id,
            run.status,
            config["bench"],
            Path(config["pool"]).name,
            config["split"],
            ",".join(map(str, config["seeds"])),
            ",".join(config["routers"]),
            f"{run.updated_at:%Y-%m-%d %H:%M}",
        )
    out.print(table)


@runs_app.command("delete")
def runs_delete(run_ids: Annotated[list[str], typer.Argument(help="Run ids (see coe runs list).")]) -> None:
    """Delete runs with their routes, answers and results (profiles stay: other runs reuse them)."""
    runs = RunStore(Store(settings().database_url))
    for run_id in run_ids:
        runs.delete(run_id)
        out.print(f"deleted run {run_id}")


@runs_app.command("trace")
def runs_trace(
    run_id: Annotated[str, typer.Argument(help="A run id.")],
    item_id: Annotated[str, typer.Argument(help="A test item id (MMLU-Pro question_id, GPQA Record ID).")],
) -> None:
    """One item of a run: each router's route and reason, each expert's answer, each fused result."""
    from coe.store import trace_item

    store = Store(settings().database_url)
    RunStore(store).get(run_id)
    trace = trace_item(store, run_id, item_id)
    if not trace.results:
        raise RunError(f"run {run_id!r} has no results for item {item_id!r} (not a test item, or not reached yet)")
    print_trace(item_id, trace)


def print_trace(item_id: str, trace: ItemTrace) -> None:
    """An item's routes, expert answers (or errors) and fused results, as three tables."""
    routes = Table(title=f"routes of item {item_id}")
    for column in ("seed", "router", "experts (score)", "reason"):
        routes.add_column(column)
    for seed, router, experts, reason in trace.routes:
        routes.add_row(str(seed), router, ", ".join(f"{e} ({s:.2f})" for e, s in experts), reason)
    out.print(routes)
    answers = Table(title="expert answers")
    for column in ("expert", "letter", "answer (start)"):
        answers.add_column(column)
    for expert, choice, text, error in trace.generations:
        shown = (
            f"error: {error}"
            if error
            else " ".join((text or "(text not kept: recorded or protected benchmark)").split())[:100]
        )
        answers.add_row(expert, choice or "-", shown)
    out.print(answers)
    results = Table(title="fused results")
    for column in ("seed", "router", "aggregator", "letter", "correct"):
        results.add_column(column)
    for seed, router, aggregator, choice, correct in trace.results:
        results.add_row(str(seed), router, aggregator, choice or "-", "yes" if correct else "no")
    out.print(results)
