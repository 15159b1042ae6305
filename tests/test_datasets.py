"""Benchmark loaders. GPQA is checked by counts, ids and hashes only: its text never appears here."""

import hashlib
from collections import Counter
from pathlib import Path

import pytest

from coe.datasets import load_benchmark, load_gpqa, load_mmlu_pro
from coe.errors import DatasetError, UnknownNameError
from tests.conftest import DATA_DIR


def test_mmlu_pro_splits_have_the_documented_sizes() -> None:
    test = load_mmlu_pro("test", DATA_DIR)
    validation = load_mmlu_pro("validation", DATA_DIR)
    assert len(test) == 12_032 and len({q.id for q in test}) == 12_032
    assert len(validation) == 70
    assert Counter(q.category for q in validation) == {c: 5 for c in Counter(q.category for q in validation)}
    option_counts = Counter(len(q.choices) for q in test)
    assert option_counts[10] == 9_981 and option_counts[3] == 20
    assert all(q.gold in "ABCDEFGHIJ"[: len(q.choices)] for q in test)


def test_gpqa_subsets_counts_and_shuffled_gold() -> None:
    diamond = load_gpqa("diamond", DATA_DIR, seed=0)
    assert len(diamond) == 198
    assert Counter(q.category for q in diamond) == {"Chemistry": 93, "Physics": 86, "Biology": 19}
    assert all(len(q.choices) == 4 for q in diamond)
    assert set(Counter(q.gold for q in diamond)) == set("ABCD")  # the correct answer is not always first
    assert len(load_gpqa("main", DATA_DIR)) == 448
    assert len(load_gpqa("extended", DATA_DIR)) == 546


def test_gpqa_shuffle_is_deterministic_per_seed() -> None:
    def fingerprint(seed: int) -> str:
        items = load_gpqa("diamond", DATA_DIR, seed=seed)
        return hashlib.sha256("".join(q.id + q.gold + "|".join(q.choices) for q in items).encode()).hexdigest()

    assert fingerprint(0) == fingerprint(0)
    assert fingerprint(0) != fingerprint(1)


def test_wrong_paths_and_password_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="wrong password"):
        load_gpqa("diamond", DATA_DIR, password="guess")
    with pytest.raises(DatasetError, match="GPQA zip not found"):
        load_gpqa("diamond", tmp_path)
    with pytest.raises(DatasetError, match="MMLU-Pro test not found"):
        load_mmlu_pro("test", tmp_path)
    with pytest.raises(UnknownNameError, match="unknown GPQA subset 'tiny'"):
        load_gpqa("tiny", DATA_DIR)
    with pytest.raises(UnknownNameError, match="unknown benchmark 'mmlu'"):
        load_benchmark("mmlu", DATA_DIR)
