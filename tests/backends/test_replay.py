"""Recorded responses as experts: extraction identical to TIGER-Lab's grading, missing records explicit."""

import csv
import gzip
import json
from itertools import islice
from pathlib import Path

import pytest

from coe.answers import read_choice
from coe.backends.replay import NO_RECORD, ReplayBackend
from coe.errors import BackendError, BackendUnavailableError
from coe.registry import Registry
from coe.schema import ExpertSpec, ReplayBackendSpec
from coe.types import GenerationParams, Prompt
from tests.conftest import DATA_DIR, REPO

PARAMS = GenerationParams()


def replay_expert(path: Path) -> ExpertSpec:
    return ExpertSpec(id="recorded", base="recorded", backend=ReplayBackendSpec(responses=path))


def write_records(path: Path, records: list[dict]) -> Path:
    with gzip.open(path, "wt") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    return path


def test_recorded_responses_by_query_id_and_explicit_no_answer(tmp_path: Path) -> None:
    path = write_records(
        tmp_path / "r.jsonl.gz",
        [{"question_id": 1, "response": "the answer is (B)"}, {"question_id": 2, "response": "Answer: C"}],
    )
    outputs = ReplayBackend().generate(
        replay_expert(path), [Prompt("?", "2"), Prompt("?", "99"), Prompt("?", "1")], PARAMS
    )
    assert [o.text for o in outputs] == ["Answer: C", "", "the answer is (B)"]
    assert outputs[1].error is not None and outputs[1].error.message == NO_RECORD
    assert (outputs[1].error.kind, outputs[1].error.expert, outputs[1].error.retryable) == (
        "no_record",
        "recorded",
        False,
    )
    assert outputs[0].ok and outputs[2].ok


def test_missing_or_malformed_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailableError, match="relative to the file or to the data dir"):
        ReplayBackend().generate(replay_expert(tmp_path / "none.jsonl.gz"), [Prompt("?", "1")], PARAMS)
    bad = write_records(tmp_path / "bad.jsonl.gz", [{"id": 1}])
    with pytest.raises(BackendError, match="after 0 records"):
        ReplayBackend().generate(replay_expert(bad), [Prompt("?", "1")], PARAMS)


def test_reference_pool_extraction_matches_the_shared_outcomes() -> None:
    """coe's extraction of the recorded responses equals the `pred` column of the shared table."""
    pool = Registry.from_file(REPO / "registry" / "replay-mmlu-pro-ref8.yaml", DATA_DIR)
    assert len(pool) == 8
    backend = ReplayBackend()
    files = {Path(e.backend.responses).name.removesuffix(".jsonl.gz"): e for e in pool.experts}
    with gzip.open(DATA_DIR / "outcomes" / "mmlu_pro_tiger_outcomes_long.csv.gz", "rt") as handle:
        rows = [r for r in islice(csv.DictReader(handle), 300_000) if r["model"] in files]
    checked = 0
    for model, expert in files.items():
        sample = [r for r in rows if r["model"] == model][::40]
        outputs = backend.generate(expert, [Prompt("", r["question_id"]) for r in sample], PARAMS)
        for row, output in zip(sample, outputs, strict=True):
            assert (read_choice(output.text, 10).letter or "") == row["pred"], (model, row["question_id"])
            checked += 1
    assert checked > 2000
