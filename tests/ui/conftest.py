"""A database as a user has one after some work (a finished evaluation run on the reference replay pool,
its stored profiles, some service traffic), and the UI run against it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from coe.evals.config import EvalConfig
from coe.evals.run import run_eval
from coe.settings import Settings
from coe.store import RequestLog, ServedRequest, Store
from coe.store.database import now
from tests.conftest import DATA_DIR, REPO

APP = REPO / "ui" / "app.py"
REPLAY_POOL = "replay-mmlu-pro-ref8"


def served_requests() -> list[ServedRequest]:
    """What the service logs: successes through two compositions and a proxy call, a fallback, errors."""
    start = now() - timedelta(minutes=50)
    requests = []
    for i in range(40):
        routed = i % 4 != 3
        requests.append(
            ServedRequest(
                model="coe" if routed else "gemini-1.5-flash-002",
                status=503 if i % 13 == 12 else 200,
                router="knn" if routed else None,
                aggregator="weighted" if routed else None,
                experts=("gemini-1.5-flash-002", "deepseek-may2024", "llama-3-70b")
                if routed
                else ("gemini-1.5-flash-002",),
                fallbacks=(("llama-3-70b", "qwen1.5-110b"),) if i % 10 == 5 else (),
                error_kind="unavailable" if i % 13 == 12 else None,
                latency_s=0.2 + 0.05 * (i % 7),
                n_prompt_tokens=300,
                n_completion_tokens=120,
                cost_usd=0.0002,
                key_name="team",
                created_at=start + timedelta(minutes=i),
            )
        )
    return requests


@pytest.fixture(scope="session")
def ui_database(tmp_path_factory: pytest.TempPathFactory, weights_cache: Path) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('ui-db') / 'coe.db'}"
    config = EvalConfig(
        bench="mmlu-pro",
        pool=REPLAY_POOL,
        split="random:1400:0",
        routers=("best-single", "random", "all", "oracle"),
        aggregators=("majority", "weighted"),
        seeds=(0, 1),
        limit=140,
    )
    run_eval(config, settings=Settings(cache_dir=weights_cache, database_url=url, data_dir=DATA_DIR))
    RequestLog(Store(url)).add(served_requests())
    return url


@pytest.fixture
def ui_env(monkeypatch: pytest.MonkeyPatch, ui_database: str, weights_cache: Path) -> dict[str, str]:
    """The `COE_*` settings `coe ui --pool replay-mmlu-pro-ref8` would run with, on the seeded database."""
    env = {
        "COE_DATABASE_URL": ui_database,
        "COE_CACHE_DIR": str(weights_cache),
        "COE_DATA_DIR": str(DATA_DIR),
        "COE_POOL": REPLAY_POOL,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def app(ui_env: dict[str, str]) -> Iterator[AppTest]:
    """The app's entry script, run once (the Compare page)."""
    yield AppTest.from_file(str(APP), default_timeout=120).run()
