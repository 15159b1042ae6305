"""`coe registry import|list|show|remove|export`: the expert registry in the database."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from coe.cli.common import out, settings
from coe.registry import Registry, dump_registry, load_registry_file
from coe.store import Store

app = typer.Typer(help="Experts persisted in the database (SQLite by default; COE_DATABASE_URL for any other).")


def _store() -> Store:
    return Store(settings().database_url)


@app.command("import")
def import_file(path: Annotated[Path, typer.Argument(help="A registry YAML file.")]) -> None:
    """Validate a registry file and store its experts (one transaction; idempotent)."""
    experts = load_registry_file(path, settings().data_dir)
    store = _store()
    known = {stored.spec.id: stored.spec for stored in store.list_experts()}
    Registry([*known.values(), *experts], source=str(path))  # adapters must find their bases
    summary = store.import_experts(experts, source=str(path.resolve()))
    out.print(
        f"imported {path}: {len(summary.added)} added, {len(summary.updated)} updated, "
        f"{len(summary.unchanged)} unchanged"
    )


@app.command("list")
def list_experts() -> None:
    """The stored experts."""
    table = Table(title=f"experts in {settings().database_url}")
    for column in ("id", "backend", "base", "adapter", "params_b", "$/Mtok", "context", "tags", "source"):
        table.add_column(column)
    for stored in _store().list_experts():
        spec = stored.spec
        table.add_row(
            spec.id,
            spec.backend_kind,
            spec.base,
            spec.adapter.name if spec.adapter else "",
            f"{spec.params_b:g}" if spec.params_b else "",
            f"{spec.cost_per_mtok:g}",
            str(spec.context),
            ", ".join(spec.tags),
            stored.source,
        )
    out.print(table)


@app.command("show")
def show(expert_id: Annotated[str, typer.Argument(help="An expert id.")]) -> None:
    """One expert, as registry YAML."""
    stored = _store().get_expert(expert_id)
    out.print(f"# from {stored.source}, imported {stored.imported_at:%Y-%m-%d %H:%M}")
    out.print(dump_registry([stored.spec]).rstrip(), markup=False)


@app.command("remove")
def remove(expert_id: Annotated[str, typer.Argument(help="An expert id.")]) -> None:
    """Remove an expert (not while adapters still use it as their base)."""
    _store().remove_expert(expert_id)
    out.print(f"removed {expert_id}")


@app.command("export")
def export(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")] = None,
) -> None:
    """All stored experts as one registry file (importing it gives them back)."""
    text = dump_registry(stored.spec for stored in _store().list_experts())
    if output is None:
        out.print(text.rstrip(), markup=False)
    else:
        output.write_text(text)
        out.print(f"wrote {output}")
