"""Benchmark loaders: local files first (`data_dir`), the Hugging Face hub when a network is there.

Items become `Query` objects with ids, choices, gold letter and category. GPQA is read from its
password-protected zip in memory and never written out: its questions must not appear in plain text
on disk, in logs, reports or fixtures (the authors' request).
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from coe.answers import LETTERS
from coe.errors import DatasetError, UnknownNameError
from coe.schema import Query
from coe.types import Failure

MMLU_PRO_HUB = "TIGER-Lab/MMLU-Pro"
GPQA_HUB = "Idavidrein/gpqa"
GPQA_PASSWORD = "deserted-untie-orchid"
"""Published in the official GPQA README; the zip is protected against crawlers, not secret."""
GPQA_SUBSETS = ("diamond", "main", "extended")
MmluProSplit = Literal["test", "validation"]
BENCHMARKS = ("mmlu-pro", "gpqa")
REDACTED_BENCHMARKS = frozenset({"gpqa"})
"""Benchmarks whose text (and so experts' answers, which quote it) is never stored or printed."""


def is_redacted(bench: str) -> bool:
    return bench in REDACTED_BENCHMARKS


def stored_error(error: Failure | None, redact: bool) -> str | None:
    """A failure as it may be stored; for a redacted benchmark without the provider's own message,
    which may quote the prompt (a 400 that echoes the question)."""
    if error is None:
        return None
    return f"{error.kind} error (message withheld: it may quote protected benchmark text)" if redact else str(error)


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


def gpqa_query(row: dict[str, Any], subset: str, seed: int) -> Query:
    """One GPQA row as a Query, its four options shuffled by (seed, record id): the CSV always lists
    the correct answer first, so unshuffled options would give the answer away."""
    record_id = row["Record ID"]
    options = [row["Correct Answer"], row["Incorrect Answer 1"], row["Incorrect Answer 2"], row["Incorrect Answer 3"]]
    order = np.random.default_rng([seed, zlib.crc32(record_id.encode())]).permutation(len(options))
    choices = tuple(options[i].strip() for i in order)
    return Query(
        id=record_id,
        text=row["Question"].strip(),
        choices=choices,
        category=row["High-level domain"],
        gold=LETTERS[int(np.flatnonzero(order == 0)[0])],
        source=f"gpqa-{subset}/{row.get('Subdomain', '').strip()}",
    )


def load_gpqa(
    subset: str = "diamond",
    data_dir: Path | None = None,
    *,
    seed: int = 0,
    password: str = GPQA_PASSWORD,
    use_hub: bool = False,
) -> list[Query]:
    """GPQA (diamond, main or extended) from `data_dir/gpqa/dataset.zip`, read in memory."""
    if subset not in GPQA_SUBSETS:
        raise UnknownNameError("GPQA subset", subset, GPQA_SUBSETS)
    if use_hub:
        return [gpqa_query(row, subset, seed) for row in _hub_rows(GPQA_HUB, f"gpqa_{subset}", "train")]
    if data_dir is None:
        raise DatasetError("no data dir: set COE_DATA_DIR to a folder holding gpqa/dataset.zip")
    path = Path(data_dir) / "gpqa" / "dataset.zip"
    member = f"dataset/gpqa_{subset}.csv"
    try:
        with zipfile.ZipFile(path) as archive:
            raw = archive.read(member, pwd=password.encode())
    except FileNotFoundError as error:
        raise DatasetError(f"GPQA zip not found at {path}; set COE_DATA_DIR to the folder holding gpqa/") from error
    except RuntimeError as error:  # zipfile's "Bad password for file"
        raise DatasetError(f"cannot open {member} in {path}: wrong password ({error})") from error
    except (zipfile.BadZipFile, KeyError) as error:
        raise DatasetError(f"{path} is not the official GPQA zip (no {member}): {error}") from error
    return [gpqa_query(row, subset, seed) for row in _csv_rows(raw.decode("utf-8"))]


def _csv_rows(text: str) -> Iterable[dict[str, str]]:
    return csv.DictReader(io.StringIO(text))


def load_benchmark(bench: str, data_dir: Path | None, *, seed: int = 0, subset: str | None = None) -> list[Query]:
    """The test items of a benchmark by name: `mmlu-pro` (test split) or `gpqa` (diamond by default)."""
    if bench == "mmlu-pro":
        return load_mmlu_pro("test", data_dir)
    if bench == "gpqa":
        return load_gpqa(subset or "diamond", data_dir, seed=seed)
    raise UnknownNameError("benchmark", bench, BENCHMARKS)


class Example(BaseModel):
    """One labelled example of a user's task (a line of a K-shot examples file)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    question: str
    choices: tuple[str, ...]
    answer: str
    """The right option's letter (A, B, ...)."""
    id: str | int | None = None
    category: str | None = None
    """The task; examples of several tasks may share a file."""


def load_examples(path: Path) -> list[Query]:
    """A K-shot examples file: JSON Lines of {question, choices, answer, id?, category?}. Ids default to
    `example-<line>`; an answer must be one of the question's option letters."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"cannot read examples file {path}: {error}") from error
    queries = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            example = Example.model_validate_json(line)
        except ValidationError as error:
            raise DatasetError(f"{path}:{number}: not an example ({{question, choices, answer}}): {error}") from error
        letters = LETTERS[: len(example.choices)]
        if example.answer not in letters:
            raise DatasetError(f"{path}:{number}: answer {example.answer!r} is not an option letter ({letters})")
        queries.append(
            Query(
                id=str(example.id) if example.id is not None else f"example-{number}",
                text=example.question,
                choices=example.choices,
                category=example.category,
                gold=example.answer,
            )
        )
    if not queries:
        raise DatasetError(f"examples file {path} holds no example")
    return queries
