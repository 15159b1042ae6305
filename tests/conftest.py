"""Shared fixtures: clean environment, settings on tmp_path, real embedded models loaded once."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from coe.backends.llamacpp import LlamaCppBackend
from coe.cli import main
from coe.embed import STATIC, Encoder, StaticEncoder
from coe.registry import Registry
from coe.settings import Settings, apply_offline_environment
from tests import postgres

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = (REPO / ".." / "shared" / "data").resolve()
EMBEDDED_POOL = REPO / "registry" / "embedded.yaml"

apply_offline_environment()


def pytest_configure(config: pytest.Config) -> None:
    """The tests read the benchmark data beside the checkout; without it they stop here, saying so,
    rather than failing to collect with a missing file deep in some module."""
    if not (DATA_DIR / "mmlu_pro").is_dir():
        pytest.exit(
            f"the tests read the benchmark data at {DATA_DIR} (MMLU-Pro, GPQA, recorded outcomes; see its "
            "README): check this repository out beside the `shared/` folder that holds it",
            returncode=4,
        )


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No COE_* variable from the developer's shell leaks into a test, nor COLUMNS (a shell that exports
    it narrows the CLI's tables, which tests read whole); the key of the tests' loopback servers
    (`api_key_env: LOCAL_KEY`) is set (any value: they check none)."""
    for key in list(os.environ):
        if key.startswith("COE_"):
            monkeypatch.delenv(key)
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setenv("LOCAL_KEY", "none")


@pytest.fixture(scope="session")
def weights_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh cache for the session, seeded with the static encoder's table when `make setup` distilled
    it into the user's cache (a deterministic table: copying it only saves distilling it again)."""
    cache = tmp_path_factory.mktemp("coe-cache")
    distilled = Path.home() / ".cache" / "coe" / "encoders" / STATIC
    if distilled.is_dir():
        shutil.copytree(distilled, cache / "encoders" / STATIC)
    return cache


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[postgres.Cluster]:
    """A throwaway PostgreSQL server for the session, started the first time a test asks for it."""
    reason = postgres.unavailable()
    if reason:
        pytest.skip(f"PostgreSQL tests skipped: {reason}")
    with postgres.throwaway_cluster() as cluster:
        yield cluster


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new empty database: a SQLite file, or a database of its own on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'coe.db'}"
    cluster: postgres.Cluster = request.getfixturevalue("postgres_cluster")
    return cluster.new_database()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The environment of a `coe` command run by a test: its own database and cache."""
    return {
        "COE_DATABASE_URL": f"sqlite:///{tmp_path / 'coe.db'}",
        "COE_CACHE_DIR": str(tmp_path / "cache"),
        "LOCAL_KEY": "none",  # the key of the tests' loopback servers (any value: they check none)
    }


@pytest.fixture
def settings(tmp_path: Path, weights_cache: Path) -> Settings:
    return Settings(
        cache_dir=weights_cache,
        database_url=f"sqlite:///{tmp_path / 'coe.db'}",
        data_dir=DATA_DIR,
    )


@pytest.fixture(scope="session")
def embedded_pool() -> Registry:
    return Registry.from_file(EMBEDDED_POOL, DATA_DIR)


@pytest.fixture(scope="session")
def embedded_backend(weights_cache: Path) -> Iterator[LlamaCppBackend]:
    """The real llama.cpp backend; models load once per session and are reused."""
    with LlamaCppBackend(cache_dir=weights_cache) as backend:
        yield backend


@pytest.fixture(scope="session")
def minilm(weights_cache: Path) -> Encoder:
    """The real MiniLM sentence encoder (loaded once), caching embeddings in the session's cache."""
    return Encoder(cache_dir=weights_cache)


CoeRunner = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def coe_here(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> CoeRunner:
    """`coe_here(*args, env={...})`: the exit code and the output of `coe ARGS`, run in-process."""

    def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setattr(sys, "argv", ["coe", *args])
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        captured = capsys.readouterr()
        return subprocess.CompletedProcess(["coe", *args], code, captured.out, captured.err)

    return run


@pytest.fixture(scope="session")
def static_encoder(weights_cache: Path) -> StaticEncoder:
    """The static encoder, distilled once per session from the local MiniLM package into the cache."""
    return StaticEncoder(cache_dir=weights_cache).load()


def session_processes(session: int) -> list[str]:
    """Processes still in a finished command's session (its Ray instance's raylet, GCS, workers)."""
    listing = subprocess.run(["ps", "-ww", "-eo", "sid=,args="], capture_output=True, text=True, check=True).stdout
    rows = [line.split(None, 1) for line in listing.splitlines() if line.strip()]
    return [row[1] for row in rows if len(row) == 2 and int(row[0]) == session]
