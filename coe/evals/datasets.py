"""Benchmark loaders: local files first (`data_dir`), the Hugging Face hub when a network is there.

Items become `Query` objects with ids, choices, gold letter and category.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, Literal

from coe.errors import DatasetError
from coe.schema import Query

MMLU_PRO_HUB = "TIGER-Lab/MMLU-Pro"
MmluProSplit = Literal["test", "validation"]


def mmlu_pro_query(row: dict[str, Any]) -> Query:
    """One MMLU-Pro row as a Query; the id is the question_id (what recorded responses key on)."""
    return Query(
        id=str(row["question_id"]),
        text=row["question"],
        choices=tuple(row["options"]),
        category=row["category"],
        gold=row["answer"],
        source=row.get("src"),
    )


def load_mmlu_pro(split: MmluProSplit = "test", data_dir: Path | None = None, *, use_hub: bool = False) -> list[Query]:
    """MMLU-Pro from `data_dir/mmlu_pro/<split>.jsonl.gz`, or from the hub when `use_hub`."""
    if split not in ("test", "validation"):
        raise DatasetError(f"MMLU-Pro has splits 'test' and 'validation', not {split!r}")
    if use_hub:
        return [mmlu_pro_query(row) for row in _hub_rows(MMLU_PRO_HUB, None, split)]
    if data_dir is None:
        raise DatasetError(
            "no data dir: set COE_DATA_DIR to a folder holding mmlu_pro/ (or run where ../shared/data exists)"
        )
    path = Path(data_dir) / "mmlu_pro" / f"{split}.jsonl.gz"
    try:
        with gzip.open(path, "rt", encoding="utf-8") as lines:
            return [mmlu_pro_query(json.loads(line)) for line in lines]
    except FileNotFoundError as error:
        raise DatasetError(
            f"MMLU-Pro {split} not found at {path}; set COE_DATA_DIR to the folder holding mmlu_pro/"
        ) from error
    except (OSError, json.JSONDecodeError, KeyError) as error:
        raise DatasetError(f"{path} is not MMLU-Pro JSON Lines: {error}") from error


def _hub_rows(name: str, config: str | None, split: str) -> list[dict[str, Any]]:
    try:
        import datasets
    except ImportError as error:
        raise DatasetError("loading from the hub needs `pip install datasets`") from error
    try:
        return list(datasets.load_dataset(name, config, split=split))
    except Exception as error:  # the hub client raises many kinds; all mean "not available"
        raise DatasetError(f"could not load {name} ({split}) from the hub: {error}") from error
