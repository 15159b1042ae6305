"""`coe registry import|pools|list|show|remove|export`: experts and named pools in the database."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from coe.backends.references import missing_references
from coe.cli.common import out, settings
from coe.errors import RegistryError
from coe.registry import dump_registry, load_registry_file
from coe.resources import bundled_pools
from coe.store import Store

app = typer.Typer(help="Experts persisted in the database (SQLite by default; COE_DATABASE_URL for any other).")


def _store() -> Store:
    return Store(settings().database_url)


@app.command("import")
def import_file(
    path: Annotated[Path, typer.Argument(help="A registry YAML file.")],
    name: Annotated[str | None, typer.Option(help="The pool's name (default: the file's stem).")] = None,
    check: Annotated[
        bool, typer.Option(help="Check that weights, GGUF files, adapters and recorded responses exist.")
    ] = True,
) -> None:
    """Validate a registry file and store its experts as a named pool (one transaction; idempotent):
    afterwards `--pool NAME` serves it anywhere a pool is asked for."""
    experts = load_registry_file(path, settings().data_dir)
    missing = [problem for expert in experts for problem in missing_references(expert)] if check else []
    if missing:
        raise RegistryError(
            f"{path}: " + "; ".join(missing) + "; nothing was written (--no-check imports files that appear later)"
        )
    pool = name or path.stem
    summary = _store().import_pool(pool, experts, source=str(path.resolve()))
    out.print(
        f"imported {path} as pool {pool!r}: {len(summary.added)} added, {len(summary.updated)} updated, "
        f"{len(summary.unchanged)} unchanged; use it with --pool {pool}"
    )


@app.command("pools")
def pools() -> None:
    """The imported pools, and the bundled ones (both answer to `--pool NAME`)."""
    table = Table(title="pools")
    for column in ("name", "experts", "source", "imported"):
        table.add_column(column)
    for stored in _store().list_pools():
        experts = ", ".join(e.id for e in stored.experts)
        table.add_row(stored.name, experts, stored.source, f"{stored.imported_at:%Y-%m-%d %H:%M}")
    for name, path in bundled_pools().items():
        experts = ", ".join(e.id for e in load_registry_file(path, settings().data_dir))
        table.add_row(name, experts, f"bundled: {path}", "")
    out.print(table)


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
    out.print(dump_registry([stored.spec]).rstrip())


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
        out.print(text.rstrip())
    else:
        output.write_text(text)
        out.print(f"wrote {output}")
