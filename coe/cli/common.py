"""What every command shares: the settings built once, consoles, progress bars, the composition builder."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from coe.compose import CompositionBuilder
from coe.errors import ConfigError
from coe.executors.base import ExecutorKind
from coe.registry import Registry
from coe.settings import Settings
from coe.types import ProgressCallback

# Text from models, files, users and errors is data, never markup: both consoles print strings as they
# are (no Rich markup, no emoji codes, no highlighting); styles come only from explicit `Text` objects.
console = Console(stderr=True, markup=False, emoji=False, highlight=False)
# Wide enough for result tables when stdout is a file or a CI log (rich assumes 80 there).
out = Console(
    markup=False,
    emoji=False,
    highlight=False,
    soft_wrap=True,
    width=max(shutil.get_terminal_size((160, 24)).columns, 120),
)


@dataclass
class _State:
    settings: Settings | None = None
    debug: bool = False
    builder: CompositionBuilder | None = None


state = _State()


def print_error(error: BaseException) -> None:
    """One line on stderr; the message is printed as it is (file names and model text are not markup)."""
    console.print(Text.assemble(("error: ", "bold red"), str(error)), soft_wrap=True)


def print_warning(message: Warning | str) -> None:
    """One line on stderr, printed as it is, like an error."""
    console.print(Text.assemble(("warning: ", "yellow"), str(message)), soft_wrap=True)


def settings() -> Settings:
    if state.settings is None:  # a command run without the app callback (tests calling functions)
        state.settings = Settings()
    return state.settings


def builder() -> CompositionBuilder:
    """The one composition builder of this command: every composition, profile and pool comes from it."""
    if state.builder is None:
        state.builder = CompositionBuilder(settings(), progress=progress)
    return state.builder


ExecutorOption = Annotated[
    ExecutorKind | None,
    typer.Option(help="Where experts run: local (this process) or ray (one Ray actor per model; default local)."),
]
RayAddressOption = Annotated[
    str | None,
    typer.Option(
        help="Ray cluster to join with --executor ray: auto, HOST:PORT or ray://HOST:PORT "
        "(default COE_RAY_ADDRESS, else a private local one)."
    ),
]


def join_ray(executor: ExecutorKind | None, ray_address: str | None) -> Settings:
    """This command's settings with `--ray-address`, which only the ray executor uses; call it before
    the builder is made, which reads the address from the settings."""
    current = settings()
    if ray_address is None:
        return current
    if executor != "ray":
        raise ConfigError(f"--ray-address {ray_address} joins a Ray cluster: add --executor ray")
    state.settings = current.model_copy(update={"ray_address": ray_address})
    return state.settings


def load_pool(pool: str | Path | None) -> Registry:
    """A pool by registry file, imported name or bundled name (the settings' default when None)."""
    return builder().pool(pool or settings().pool)


@contextmanager
def progress(description: str, total: int) -> Iterator[ProgressCallback]:
    """A progress bar on stderr (progress lines when stderr is a log file); yields `advance(n)`."""
    if not console.is_terminal:
        yield _progress_lines(description, total)
        return
    bar = Progress(
        TextColumn("{task.description}", style="bold", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    with bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def _progress_lines(description: str, total: int) -> ProgressCallback:
    """`advance(n)` that prints a line at every tenth of the work, so a long run in a log shows life."""
    started = time.perf_counter()
    done = 0
    console.print(f"{description}: 0/{total}")

    def advance(n: int) -> None:
        nonlocal done
        before, done = done, done + n
        if done * 10 // max(total, 1) > before * 10 // max(total, 1):
            console.print(f"{description}: {done}/{total} after {time.perf_counter() - started:.0f} s")

    return advance
