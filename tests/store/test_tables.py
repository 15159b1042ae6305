"""The database URL and what models write: the same on SQLite and on PostgreSQL."""

import pytest

from coe.errors import ConfigError
from coe.store import ProfileItem, ProfileOutcome, ProfileStore, RunStore, Store
from tests.postgres import Cluster


def test_model_text_with_a_nul_character_is_stored_on_every_database(database_url: str) -> None:
    store = Store(database_url)
    runs = RunStore(store)
    runs.create("r", {})
    generation = {"expert_id": "e", "item_id": "1", "choice": "A", "text": "The answer is\x00 (A)."}
    runs.save_chunk("r", 0, generations=[generation], routes=[], results=[])
    assert [text for _, _, text, *_ in runs.stored_texts("r")] == ["The answer is\ufffd (A)."]
    profiles = ProfileStore(store)
    record = profiles.open(key="k", bench="b", split="s", pool="p", experts={}, params={})
    failed = ProfileOutcome("1", "e", None, None, text="\x00", error="HTTP 400: bad byte \x00")
    profiles.add(record.id, [ProfileItem("1", None, ())], [failed])
    [stored] = profiles.outcomes(record.id, with_text=True)
    assert (stored.text, stored.error) == ("\ufffd", "HTTP 400: bad byte \ufffd")
    store.close()


def test_a_database_other_than_sqlite_or_postgresql_is_one_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"coe runs on SQLite \(sqlite:///FILE\) or PostgreSQL.*not 'mysql'"):
        Store("mysql://coe@127.0.0.1/coe").list_experts()


@pytest.mark.postgres
def test_a_plain_postgresql_url_uses_psycopg(postgres_cluster: Cluster) -> None:
    url = postgres_cluster.new_database().replace("postgresql+psycopg://", "postgresql://")
    store = Store(url)
    assert store.list_experts() == [] and store.engine.dialect.driver == "psycopg"
    store.close()
