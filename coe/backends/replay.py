"""Recorded responses as an expert: router and aggregator research over real model outputs at no
inference cost. Answers are extracted by coe's own extraction, exactly like live generations.

A file is `.jsonl.gz` of {"question_id": int, "response": str} lines (TIGER-Lab's MMLU-Pro outputs);
a question with no record gives an explicit no-answer (an error the aggregator skips), never a crash.
"""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Sequence
from pathlib import Path

from coe.backends.base import Capabilities, NoLoadMixin
from coe.errors import BackendError, BackendUnavailableError
from coe.schema import ExpertSpec, ReplayBackendSpec
from coe.types import Failure, Generation, GenerationParams, Prompt

NO_RECORD = "no recorded response for this question"


class ReplayBackend(NoLoadMixin):
    """Serves recorded responses by query id; each file is read once and kept."""

    capabilities = Capabilities(needs_load=False, recorded=True)

    def __init__(self) -> None:
        self._tables: dict[Path, dict[str, str]] = {}
        self._lock = threading.Lock()

    def __reduce__(self) -> tuple[type[ReplayBackend], tuple[()]]:
        """A pickled copy (what a Ray actor receives) reads its files again where it runs."""
        return type(self), ()

    def generate(self, expert: ExpertSpec, prompts: Sequence[Prompt], params: GenerationParams) -> list[Generation]:
        table = self.responses(expert)
        missing = Failure(NO_RECORD, kind="no_record", expert=expert.id)
        outputs = []
        for prompt in prompts:
            text = table.get(prompt.query_id)
            outputs.append(Generation(text=text) if text is not None else Generation(text="", error=missing))
        return outputs

    def responses(self, expert: ExpertSpec) -> dict[str, str]:
        """query id -> recorded response, for one replay expert."""
        if not isinstance(expert.backend, ReplayBackendSpec):
            raise BackendError(f"not a replay expert (backend kind {expert.backend_kind!r})", expert=expert.id)
        path = expert.backend.responses
        with self._lock:
            if path not in self._tables:
                self._tables[path] = read_responses(path, expert.id)
            return self._tables[path]

    def close(self) -> None:
        self._tables.clear()


def read_responses(path: Path, expert: str | None = None) -> dict[str, str]:
    """A responses file as {question id: response}."""
    table: dict[str, str] = {}
    try:
        with gzip.open(path, "rt", encoding="utf-8") as lines:
            for line in lines:
                record = json.loads(line)
                table[str(record["question_id"])] = record["response"] or ""
    except FileNotFoundError as error:
        raise BackendUnavailableError(
            f"recorded responses {path} not found; paths in a registry file are relative to the file or to "
            "the data dir (COE_DATA_DIR)",
            expert=expert,
        ) from error
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise BackendError(
            f"{path} (after {len(table)} records) is not .jsonl.gz of {{question_id, response}} records: {error}",
            expert=expert,
        ) from error
    return table
