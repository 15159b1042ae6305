"""Evaluation runs: the reference replay pool against the shared correctness matrix; live runs on the
embedded models that are interrupted and resumed without recomputing finished items."""

import csv
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from coe.backends import Backend
from coe.backends.llamacpp import LlamaCppBackend
from coe.backends.replay import ReplayBackend
from coe.datasets import load_mmlu_pro
from coe.embed import STATIC, EmbeddingCache, StaticEncoder
from coe.errors import RunError
from coe.evals.config import ADDED_FIELDS, EvalConfig, seeded_split
from coe.evals.report import write_report
from coe.evals.run import pool_fingerprint, run_eval
from coe.registry import Registry
from coe.schema import ExpertSpec
from coe.settings import Settings
from coe.skills import bundled_taxonomy
from coe.splits import make_split
from coe.store import RunStore, Store
from coe.types import Generation, GenerationParams, LoadReport, Prompt
from tests.conftest import DATA_DIR, EMBEDDED_POOL, REPO

REF8 = REPO / "registry" / "replay-mmlu-pro-ref8.yaml"


class CountingBackend:
    """The real backend, recording which (expert, query) pairs it was asked to generate."""

    def __init__(self, inner: Backend) -> None:
        self.capabilities = inner.capabilities
        self.inner = inner
        self.asked: list[tuple[str, str]] = []

    def load(self, expert: ExpertSpec, adapters: Sequence[ExpertSpec] = ()) -> LoadReport:
        return self.inner.load(expert, adapters)

    def generate(self, expert: ExpertSpec, prompts: Sequence[Prompt], params: GenerationParams) -> list[Generation]:
        self.asked.extend((expert.id, p.query_id) for p in prompts)
        return self.inner.generate(expert, prompts, params)

    def unload(self, expert: ExpertSpec) -> None:
        self.inner.unload(expert)

    def is_loaded(self, expert: ExpertSpec) -> bool:
        return self.inner.is_loaded(expert)

    def close(self) -> None:
        return None


def eval_settings(tmp_path: Path, database_url: str | None = None) -> Settings:
    url = database_url or f"sqlite:///{tmp_path / 'coe.db'}"
    return Settings(cache_dir=tmp_path, database_url=url, data_dir=DATA_DIR)


def matrix_accuracy(split_seed: int) -> tuple[str, float, float]:
    """Best single expert (on the profiling items) and oracle, straight from the shared matrix."""
    pool = Registry.from_file(REF8, DATA_DIR)
    column = {Path(e.backend.responses).name.removesuffix(".jsonl.gz"): e.id for e in pool.experts}
    with gzip.open(DATA_DIR / "outcomes" / "mmlu_pro_tiger_correct_matrix.csv.gz", "rt") as handle:
        rows = {row["question_id"]: row for row in csv.DictReader(handle)}
    split = make_split(f"random:1400:{split_seed}", load_mmlu_pro("test", DATA_DIR), "mmlu-pro")

    def matrix(ids: Sequence[str]) -> np.ndarray:
        return np.array([[float(rows[i][m] or 0) for m in column] for i in ids])

    best = int(np.argmax(matrix(split.profile_ids).mean(axis=0)))
    test = matrix(split.test_ids)
    return list(column.values())[best], float(test[:, best].mean()), float(test.max(axis=1).mean())


@pytest.mark.slow
def test_reference_pool_baselines_agree_with_the_shared_correctness_matrix(tmp_path: Path) -> None:
    config = EvalConfig(
        bench="mmlu-pro",
        pool=str(REF8),
        split="random:1400:0",
        routers=("best-single", "oracle"),
        aggregators=("majority",),
        seeds=(0,),
    )
    summary = run_eval(
        config,
        store=Store(f"sqlite:///{tmp_path / 'coe.db'}"),
        backends={"replay": ReplayBackend()},
        settings=eval_settings(tmp_path),
    )
    expert, best_accuracy, oracle_accuracy = matrix_accuracy(0)
    assert summary.n_test == 12_032 - 1400
    assert summary.best_single.expert == expert
    # coe grades against the current gold; the matrix against the item version each model saw (a few
    # dozen items changed upstream), so the two agree to within a few tenths of a point.
    assert abs(summary.best_single.accuracy_mean - best_accuracy) < 0.004
    assert summary.oracle is not None and abs(summary.oracle.accuracy_mean - oracle_accuracy) < 0.004


def test_json_summary_shape_and_report(database_url: str, tmp_path: Path) -> None:
    config = EvalConfig(
        bench="mmlu-pro",
        pool=str(REF8),
        split="random:1400:0",
        routers=("best-single", "random", "all", "oracle"),
        aggregators=("majority", "weighted"),
        seeds=(0, 1),
        limit=300,
        chunk_size=120,
    )
    summary = run_eval(
        config,
        store=Store(database_url),
        backends={"replay": ReplayBackend()},
        settings=eval_settings(tmp_path, database_url),
    )
    assert summary.n_test == 300 and summary.seeds == [0, 1]
    keys = {(r.router, r.aggregator) for r in summary.results}
    assert keys == {(r, a) for r in ("best-single", "random", "all", "oracle") for a in ("majority", "weighted")}
    by = {(r.router, r.aggregator): r for r in summary.results}
    assert by["all", "majority"].calls_per_query == 8 and by["random", "majority"].calls_per_query == 3
    assert by["oracle", "majority"].accuracy_mean >= by["all", "majority"].accuracy_mean
    assert summary.oracle and summary.oracle.accuracy_mean == by["oracle", "majority"].accuracy_mean
    assert len(by["random", "weighted"].accuracy_per_seed) == 2
    assert set(summary.per_category) >= {"all/majority", "best-single/weighted"}
    # paired with best-single item by item: itself exactly, the oracle far above, random 3 far below
    assert by["best-single", "weighted"].delta_ci95 == (0.0, 0.0) and not by["best-single", "weighted"].wins
    low, high = by["oracle", "majority"].delta_ci95 or (0.0, 0.0)
    assert 0 < low < by["oracle", "majority"].delta_vs_best_single < high and by["oracle", "majority"].wins
    assert (by["random", "majority"].delta_ci95 or (0.0, 0.0))[1] < 0 and not by["random", "majority"].wins
    report = write_report(summary, tmp_path / "report")
    text = report.read_text()
    assert "| all | weighted |" in text and "Oracle" in text
    assert "| oracle | majority |" in text and f"{100 * low:+.2f}" in text and "| yes |" in text
    assert sorted(p.name for p in report.parent.glob("*.png")) == sorted(
        f"{summary.run_id}-{name}.png" for name in ("accuracy", "calls", "categories")
    )


def test_the_chosen_encoder_embeds_for_every_embedding_router(tmp_path: Path, static_encoder: StaticEncoder) -> None:
    assert static_encoder.cache_dir is not None
    shutil.copytree(static_encoder.cache_dir / "encoders", tmp_path / "encoders")
    config = EvalConfig(
        bench="mmlu-pro",
        pool=str(REF8),
        split="random:140:0",
        routers=("knn", "skill", "classifier"),
        aggregators=("majority",),
        limit=40,
        encoder="static",
    )
    store = Store(f"sqlite:///{tmp_path / 'coe.db'}")
    summary = run_eval(config, store=store, backends={"replay": ReplayBackend()}, settings=eval_settings(tmp_path))
    assert {r.router for r in summary.results} >= {"knn", "skill", "classifier"}
    assert [p.name for p in (tmp_path / "embeddings").iterdir()] == [STATIC]  # MiniLM never ran
    # the 140 profiling items, the 40 test items and the taxonomy's skill descriptions, nothing else
    cached = EmbeddingCache(tmp_path / "embeddings" / STATIC)
    n_skills = len(bundled_taxonomy("mmlu_pro").skills)
    assert len(cached) == 140 + 40 + n_skills
    with pytest.raises(ValidationError, match="encoder"):
        EvalConfig.model_validate({**config.model_dump(), "encoder": "bert"})


def test_runs_stored_before_the_encoder_setting_resume_as_minilm_runs(tmp_path: Path) -> None:
    config = EvalConfig(bench="mmlu-pro", pool=str(REF8), split="random:140:0", routers=("best-single",), limit=20)
    store = Store(f"sqlite:///{tmp_path / 'coe.db'}")
    fingerprint = pool_fingerprint(Registry.from_file(REF8, DATA_DIR))
    stored = config.model_copy(update={"pool_fingerprint": fingerprint}).model_dump(mode="json")
    del stored["encoder"]
    RunStore(store).create("old-run", stored)
    replay = {"replay": ReplayBackend()}
    with pytest.raises(RunError, match="encoder: stored 'minilm', given 'static'"):
        run_eval(
            config.model_copy(update={"encoder": "static"}),
            store=store,
            backends=replay,
            settings=eval_settings(tmp_path),
            run_id="old-run",
        )
    resumed = EvalConfig.model_validate({**ADDED_FIELDS, **stored})
    summary = run_eval(resumed, store=store, backends=replay, settings=eval_settings(tmp_path), run_id="old-run")
    assert summary.n_test == 20


def test_kshot_sees_k_profiling_items_per_category(tmp_path: Path) -> None:
    config = EvalConfig(
        bench="mmlu-pro",
        pool=str(REF8),
        split="random:1400:0",
        routers=("best-single", "kshot"),
        aggregators=("majority",),
        limit=140,
        kshot=5,
    )
    url = f"sqlite:///{tmp_path / 'coe.db'}"
    summary = run_eval(config, store=Store(url), backends={"replay": ReplayBackend()}, settings=eval_settings(tmp_path))
    assert summary.kshot == 5
    reasons = {reason for (reason,) in sql(url, "select reason from run_routes where router = 'kshot'")}
    assert len(reasons) > 1 and all("K-shot accuracy on 5 examples of task " in reason for reason in reasons)


def live_config(ids_file: Path, **overrides: object) -> EvalConfig:
    settings = {
        "bench": "mmlu-pro",
        "pool": str(EMBEDDED_POOL),
        "split": f"ids:{ids_file}",
        "routers": ("best-single", "all", "oracle"),
        "aggregators": ("majority",),
        "seeds": (0,),
        "limit": 6,
        "max_tokens": 8,
        "chunk_size": 2,
    }
    return EvalConfig.model_validate({**settings, **overrides})


@pytest.fixture
def ids_file(tmp_path: Path) -> Path:
    path = tmp_path / "profile-ids.txt"
    path.write_text("70\n71\n4000\n9000\n")
    return path


class Interrupt(Exception):
    pass


@contextmanager
def interrupting(description: str, total: int):
    """A progress bar that stops the run after the first stored chunk of test items."""

    def advance(n: int) -> None:
        if description.startswith("seed 0: evaluating"):
            raise Interrupt

    yield advance


def test_interrupted_run_resumes_without_recomputing_finished_items(
    tmp_path: Path, ids_file: Path, weights_cache: Path
) -> None:
    with LlamaCppBackend(cache_dir=weights_cache) as inner:
        interrupt_then_resume(f"sqlite:///{tmp_path / 'coe.db'}", live_config(ids_file), "embedded", inner, tmp_path)


def test_interrupted_replay_run_resumes_on_sqlite_and_postgresql(
    database_url: str, tmp_path: Path, ids_file: Path
) -> None:
    # No oracle: it replays every test item each run, as recorded answers are never stored.
    config = live_config(ids_file, pool=str(REF8), routers=("best-single", "all"))
    interrupt_then_resume(database_url, config, "replay", ReplayBackend(), tmp_path)


def interrupt_then_resume(url: str, config: EvalConfig, kind: str, inner: Backend, tmp_path: Path) -> None:
    """Stop a run after its first stored chunk, resume it: only the unfinished items are generated."""
    store = Store(url)
    first = CountingBackend(inner)
    with pytest.raises(Interrupt):
        run_eval(
            config, store=store, backends={kind: first}, settings=eval_settings(tmp_path, url), progress=interrupting
        )
    run_id = store_runs(url)[0]
    finished = {item for (item,) in sql(url, "select distinct item_id from run_results")}
    assert len(finished) == 2

    again = CountingBackend(inner)
    summary = run_eval(
        config, store=store, backends={kind: again}, settings=eval_settings(tmp_path, url), run_id=run_id
    )
    n_experts = len(Registry.from_file(Path(config.pool), DATA_DIR))
    assert not {item for _, item in again.asked} & (finished | {"70", "71", "4000", "9000"})
    assert len(again.asked) == n_experts * 4  # the 4 unfinished test items, every expert; profile reused
    assert summary.n_test == 6
    rows = sql(url, "select count(*), count(distinct item_id) from run_results where router='all'")
    assert rows == [(6, 6)]
    store.close()


def test_resume_refuses_other_settings_and_unknown_runs(database_url: str, tmp_path: Path, ids_file: Path) -> None:
    store = Store(database_url)
    with pytest.raises(RunError, match="no run 'nope'"):
        run_eval(
            live_config(ids_file),
            store=store,
            backends={},
            settings=eval_settings(tmp_path, database_url),
            run_id="nope",
        )
    RunStore(store).create("r1", live_config(ids_file).model_dump(mode="json"))
    with pytest.raises(RunError, match="k: stored 3, given 2"):
        run_eval(
            live_config(ids_file, k=2),
            store=store,
            backends={},
            settings=eval_settings(tmp_path, database_url),
            run_id="r1",
        )


def test_seeded_split_moves_only_random_specs() -> None:
    assert seeded_split("random:1400:0", 2) == "random:1400:2"
    assert seeded_split("symbolic-moe", 2) == "symbolic-moe"


@pytest.mark.slow
def test_killed_cli_run_resumes_to_identical_numbers(tmp_path: Path, ids_file: Path, weights_cache: Path) -> None:
    url = f"sqlite:///{tmp_path / 'coe.db'}"
    env = {**os.environ, "COE_DATABASE_URL": url, "COE_CACHE_DIR": str(weights_cache)}
    args = [
        "eval",
        "--bench",
        "mmlu-pro",
        "--pool",
        str(EMBEDDED_POOL),
        "--split",
        f"ids:{ids_file}",
        "--routers",
        "best-single,all",
        "--aggregators",
        "majority,weighted",
        "--seeds",
        "0",
        "--limit",
        "4",
        "--max-tokens",
        "8",
        "--chunk-size",
        "2",
    ]
    command = [sys.executable, "-m", "coe.cli"]
    process = subprocess.Popen([*command, *args], env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if sql(url, "select count(*) from run_results")[0][0] > 0:
                break
        except OperationalError:  # the database or its tables are not there yet
            pass
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    run_id = store_runs(url)[0]
    done_before = sql(url, "select count(distinct item_id) from run_results")[0][0]
    assert 0 < done_before < 4, "the run was not caught midway"

    for finishing in (["eval", "--resume", run_id, "--json", "resumed.json"], [*args, "--json", "fresh.json"]):
        finishing[-1] = str(tmp_path / finishing[-1])
        done = subprocess.run([*command, *finishing], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr

    def numbers(name: str) -> list[tuple]:
        data = json.loads((tmp_path / name).read_text())
        return [(r["router"], r["aggregator"], r["accuracy_mean"], r["calls_per_query"]) for r in data["results"]]

    assert numbers("resumed.json") == numbers("fresh.json")
    assert sql(url, f"select count(*) from run_results where run_id='{run_id}'") == [(4 * 2 * 2,)]


def sql(url: str, query: str) -> list[tuple]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(query))]
    finally:
        engine.dispose()


def store_runs(url: str) -> list[str]:
    return [run_id for (run_id,) in sql(url, "select id from runs order by created_at")]
