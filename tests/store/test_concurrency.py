"""Several real processes share one database: on a new one (first uses create the schema at once) and on
an existing one, on SQLite and on PostgreSQL, no writer fails and no row is lost or stored twice."""

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from coe.errors import StoreError
from coe.store import Store
from tests.conftest import DATA_DIR, REPO
from tests.store.writers import expert, run_writers


@pytest.mark.parametrize("existing", [False, True], ids=["new-database", "existing-database"])
def test_concurrent_writer_processes_lose_and_double_nothing(database_url: str, existing: bool) -> None:
    if existing:
        Store(database_url).list_experts()  # creates the tables
    figures = run_writers(database_url, processes=4, writes=6)
    assert (figures.errors, figures.lost, figures.duplicated, figures.miscounted) == (0, 0, 0, 0), figures.stderr


def test_concurrent_evals_needing_the_same_new_profile_share_it(database_url: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "COE_DATABASE_URL": database_url,
        "COE_CACHE_DIR": str(tmp_path),
        "COE_DATA_DIR": str(DATA_DIR),
    }
    command = [sys.executable, "-m", "coe.cli", "eval", "--bench", "mmlu-pro"]
    command += ["--pool", str(REPO / "registry" / "replay-mmlu-pro-ref8.yaml"), "--split", "random:40:0"]
    command += ["--routers", "best-single", "--aggregators", "majority", "--seeds", "0", "--limit", "20"]
    evals = [
        subprocess.Popen([*command, "--json", str(tmp_path / f"{n}.json")], env=env, cwd=REPO, stderr=subprocess.PIPE)
        for n in range(3)
    ]
    failures = [e.communicate(timeout=300)[1].decode()[-2000:] for e in evals]
    assert [e.returncode for e in evals] == [0, 0, 0], failures
    accuracies = {json.loads((tmp_path / f"{n}.json").read_text())["results"][0]["accuracy_mean"] for n in range(3)}
    assert len(accuracies) == 1
    engine = create_engine(database_url)
    with engine.connect() as connection:
        counts = [
            connection.execute(text(f"select count(*) from {t}")).scalar() for t in ("profiles", "profile_outcomes")
        ]
    engine.dispose()
    assert counts == [1, 40 * 8]


@contextmanager
def another_writer_holding_the_lock(url: str) -> Iterator[None]:
    """A second connection holding the write lock the store needs (SQLite's, or PostgreSQL's on experts)."""
    engine = create_engine(url)
    with engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.exec_driver_sql("BEGIN")
            connection.exec_driver_sql("LOCK TABLE experts IN EXCLUSIVE MODE")
        yield
        connection.rollback()
    engine.dispose()


def test_a_write_that_waits_past_the_lock_timeout_runs_once_more(database_url: str) -> None:
    """Another writer holds the lock for 1.5 timeouts: the first try gives up, the second succeeds."""
    store = Store(database_url, lock_timeout_s=1.0)
    store.import_experts([expert("a")], source="first")
    holding = threading.Event()

    def hold_the_lock() -> None:
        with another_writer_holding_the_lock(database_url):
            holding.set()
            time.sleep(1.5)

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    holding.wait()
    started = time.monotonic()
    try:
        summary = store.import_experts([expert("a"), expert("b")], source="second")
    finally:
        holder.join()
    assert time.monotonic() - started > 1.0  # the first try timed out
    assert (summary.added, summary.updated) == (("b",), ("a",))
    store.close()


def test_a_write_that_loses_twice_says_so_in_one_line(database_url: str) -> None:
    store = Store(database_url, lock_timeout_s=0.3)
    store.import_experts([expert("a")], source="first")
    with (
        another_writer_holding_the_lock(database_url),
        pytest.raises(StoreError, match="stayed locked by another writer, twice"),
    ):
        store.import_experts([expert("b")], source="second")
    store.close()
