from collections import Counter

import pytest

from coe.datasets import load_mmlu_pro
from coe.errors import DatasetError
from coe.splits import make_split
from tests.conftest import DATA_DIR


@pytest.fixture(scope="module")
def test_items():
    return load_mmlu_pro("test", DATA_DIR)


def test_random_split_is_stratified_disjoint_and_seeded(test_items) -> None:
    split = make_split("random:1400:0", test_items, "mmlu-pro")
    assert len(split.profile_ids) == 1400 and len(split.test_ids) == 12_032 - 1400
    assert not set(split.profile_ids) & set(split.test_ids)
    category = {q.id: q.category for q in test_items}
    shares = Counter(category[i] for i in split.profile_ids)
    assert shares["math"] == round(1351 * 1400 / 12_032) and shares["history"] == round(381 * 1400 / 12_032)
    assert make_split("random:1400:0", test_items, "mmlu-pro") == split
    assert make_split("random:1400:1", test_items, "mmlu-pro").profile_ids != split.profile_ids


def test_ids_and_symbolic_moe_splits(test_items, tmp_path) -> None:
    path = tmp_path / "ids.txt"
    path.write_text("id\n70\n71\n")
    assert make_split(f"ids:{path}", test_items, "mmlu-pro").profile_ids == ("70", "71")
    symbolic = make_split("symbolic-moe", test_items, "mmlu-pro", DATA_DIR)
    assert len(symbolic.profile_ids) == 350
    assert len(set(symbolic.test_ids)) == len(symbolic.test_ids) > 2000


@pytest.mark.parametrize("spec", ["random:abc", "random:0:1", "ids:/no/such/file", "halves"])
def test_bad_specs_are_named(test_items, spec: str) -> None:
    with pytest.raises(DatasetError):
        make_split(spec, test_items, "mmlu-pro")
