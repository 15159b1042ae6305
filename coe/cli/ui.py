"""`coe ui`: the Streamlit comparison UI of a checkout (`ui/app.py`), served on a loopback port."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from coe.cli.common import console, load_pool, settings
from coe.errors import ConfigError

APP = Path(__file__).resolve().parents[2] / "ui" / "app.py"


def register(app: typer.Typer) -> None:
    app.command("ui")(ui)


def ui(
    pool: Annotated[
        str | None,
        typer.Option(
            "--pool", help="The pool shown first: registry file, imported or bundled name (default: embedded)."
        ),
    ] = None,
    port: Annotated[
        int, typer.Option("--port", help="The port to serve on (on COE_HOST, 127.0.0.1 by default).")
    ] = 8501,
) -> None:
    """Compare routers and aggregators side by side in the browser; browse experts, runs and traffic."""
    if not APP.is_file():
        raise ConfigError(f"coe ui runs the app of a checkout of coe ({APP} is missing); run it from the repository")
    if importlib.util.find_spec("streamlit") is None:
        raise ConfigError("coe ui needs Streamlit: pip install 'coe[ui]' (make setup installs it)")
    current = settings()
    chosen = pool or current.pool
    load_pool(chosen)  # a bad pool is one clear line here, not a broken page
    if Path(chosen).is_file():
        chosen = str(Path(chosen).resolve())
    console.print(f"coe ui: http://{current.host}:{port} (pool {chosen}); Ctrl-C stops it", highlight=False)
    argv = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP),
        "--server.address",
        current.host,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--server.fileWatcherType",
        "none",
        "--browser.gatherUsageStats",
        "false",
        "--runner.magicEnabled",
        "false",
        "--client.toolbarMode",
        "viewer",
    ]
    # the Streamlit process replaces this one, so stopping `coe ui` stops the server
    os.execve(sys.executable, argv, {**os.environ, "COE_POOL": chosen})
