"""`coe ...` commands: thin shells over the library. Settings are built once, here."""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from coe.cli import adapters, ask, demo, evals, registry, serve, stored, ui
from coe.cli.common import print_error, print_warning, state
from coe.errors import (
    BackendError,
    CoeError,
    ConfigError,
    DatasetError,
    LiteralSecretWarning,
    ProfileError,
    QueryError,
    RunError,
    UnknownExpertError,
    UnknownNameError,
)
from coe.settings import Settings, apply_offline_environment

app = typer.Typer(
    help="coe — Composition of Experts: route questions to LLM experts and fuse their answers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(registry.app, name="registry")
app.add_typer(adapters.app, name="adapters")
ask.register(app)
demo.register(app)
evals.register(app)
stored.register(app)
serve.register(app)
ui.register(app)

EXIT_CODES: tuple[tuple[type[CoeError], int], ...] = (
    (ConfigError, 2),
    (QueryError, 2),
    (UnknownExpertError, 3),
    (UnknownNameError, 3),
    (DatasetError, 4),
    (BackendError, 5),
    (RunError, 6),
    (ProfileError, 6),
)


@app.callback()
def _configure(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False) -> None:
    settings = Settings()
    if settings.offline:
        apply_offline_environment()
    logging.basicConfig(
        level=logging.DEBUG if debug else settings.log_level, format="%(levelname)s %(name)s: %(message)s"
    )
    state.settings = settings
    state.builder = None
    state.debug = debug
    warnings.showwarning = _show_warning


_python_showwarning = warnings.showwarning


def _show_warning(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None, line: Any = None
) -> None:
    """coe's own warnings as one plain line on stderr; others as Python prints them."""
    if issubclass(category, LiteralSecretWarning):
        print_warning(message)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


def main() -> None:
    """Entry point: one clear line and an exit code per error class; tracebacks only with --debug."""
    try:
        app()
    except CoeError as error:
        if state.debug:
            raise
        print_error(error)
        sys.exit(next((code for cls, code in EXIT_CODES if isinstance(error, cls)), 1))
    except ValidationError as error:  # a value given on the command line that a coe type refuses
        if state.debug:
            raise
        from_environment = error.title == Settings.__name__  # settings come from COE_* variables
        problems = "; ".join(
            f"{_field_name(p['loc'], from_environment)}: {p['msg'].removeprefix('Value error, ')} (got {p['input']!r})"
            for p in error.errors()
        )
        print_error(ConfigError(f"invalid {'environment' if from_environment else 'input'}: {problems}"))
        sys.exit(2)


def _field_name(loc: tuple[int | str, ...], from_environment: bool) -> str:
    name = ".".join(map(str, loc)) or "input"
    return f"COE_{name.upper()}" if from_environment else name
