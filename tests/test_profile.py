"""Profiling: measured outcomes stored chunk by chunk, reused when complete, continued when interrupted."""

from pathlib import Path

import numpy as np
import pytest

from coe.backends.replay import ReplayBackend
from coe.datasets import load_mmlu_pro
from coe.errors import ConfigError
from coe.profile import profile
from coe.registry import Registry
from coe.scheduler import Scheduler
from coe.store import ProfileStore, Store
from coe.types import GenerationParams
from tests.conftest import DATA_DIR, REPO


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def pool() -> Registry:
    return Registry.from_file(REPO / "registry" / "replay-mmlu-pro-ref8.yaml", DATA_DIR)


def test_an_interrupted_profiling_continues_and_a_complete_one_is_reused(tmp_path: Path, pool: Registry) -> None:
    store = Store(f"sqlite:///{tmp_path / 'coe.db'}")
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


def test_a_database_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    import sqlite3

    url = f"sqlite:///{tmp_path / 'coe.db'}"
    Store(url).list_experts()
    with sqlite3.connect(tmp_path / "coe.db") as connection:
        connection.execute("update coe_meta set value='1' where key='schema_version'")
    with pytest.raises(ConfigError, match="schema version 1, this coe needs"):
        Store(url).list_experts()
