"""Profiling: measured outcomes stored chunk by chunk, reused when complete, continued when interrupted."""

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, text

from coe.backends.replay import ReplayBackend
from coe.compose import CompositionBuilder, RouterSpec, SplitProfile
from coe.datasets import load_mmlu_pro
from coe.errors import ConfigError
from coe.profile import profile
from coe.registry import Registry
from coe.scheduler import Scheduler
from coe.settings import Settings
from coe.store import ProfileStore, Store
from coe.types import GenerationParams
from tests.conftest import DATA_DIR, REPO
from tests.recorded import flaky_pool


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def pool() -> Registry:
    return Registry.from_file(REPO / "registry" / "replay-mmlu-pro-ref8.yaml", DATA_DIR)


def test_an_interrupted_profiling_continues_and_a_complete_one_is_reused(
    database_url: str, tmp_path: Path, pool: Registry
) -> None:
    store = Store(database_url)
    items = load_mmlu_pro("test", DATA_DIR)[:45]
    scheduler = Scheduler({"replay": ReplayBackend()})
    seen: list[int] = []

    def stop_after_first_chunk(n: int) -> None:
        seen.append(n)
        if sum(seen) > 10 * len(pool):
            raise Stop

    kwargs = {
        "bench": "mmlu-pro",
        "split": "first-45",
        "items": items,
        "scheduler": scheduler,
        "params": GenerationParams(),
        "chunk_size": 10,
    }
    with pytest.raises(Stop):
        profile(store, pool, on_progress=stop_after_first_chunk, **kwargs)
    [partial] = ProfileStore(store).all()
    assert not partial.complete and len(ProfileStore(store).items(partial.id)) == 10

    continued = profile(store, pool, **kwargs)
    assert not continued.reused and continued.record.id == partial.id and continued.record.complete
    assert [i.item_id for i in ProfileStore(store).items(partial.id)] == [q.id for q in items]
    again = profile(store, pool, **kwargs)
    assert again.reused
    np.testing.assert_array_equal(again.outcomes.correct, continued.outcomes.correct)
    assert continued.outcomes.correct.shape == (45, 8)
    assert set(np.unique(continued.outcomes.correct)) == {0.0, 1.0}


def test_a_database_of_another_schema_version_is_refused(database_url: str) -> None:
    Store(database_url).list_experts()  # creates the tables
    engine = create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(text("update coe_meta set value='1' where key='schema_version'"))
    engine.dispose()
    with pytest.raises(ConfigError, match="schema version 1, this coe needs"):
        Store(database_url).list_experts()


def test_an_expert_that_often_fails_is_charged_for_its_failures(tmp_path: Path) -> None:
    builder = CompositionBuilder(
        Settings(cache_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'c.db'}", data_dir=DATA_DIR)
    )
    registry = flaky_pool(tmp_path)
    source = SplitProfile(bench="mmlu-pro", split="random:1400:0")
    outcomes, _ = builder.outcomes(source, registry, GenerationParams(max_tokens=512), annotate=False)
    flaky, steady = outcomes.failure_rate()
    assert 0.12 < flaky < 0.18 and steady < 0.01
    assert outcomes.accuracy()[0] < outcomes.accuracy()[1]  # failures count as wrong answers
    answered = ~outcomes.failed[:, 0]
    assert np.nanmean(outcomes.correct[answered, 0]) > outcomes.accuracy()[1]  # yet it is better when it answers
    best = builder.router(RouterSpec(name="best-single"), outcomes, k=1, seed=0, bench="mmlu-pro")
    assert best.route(load_mmlu_pro("test", DATA_DIR)[:1])[0].expert_ids == ["steady"]
