"""Recorded pools for failure tests: a strong recorded expert with 15% of its answers gone."""

import gzip
import json
import zlib
from pathlib import Path

from coe.registry import Registry
from tests.conftest import DATA_DIR

RECORDED = DATA_DIR / "outcomes" / "mmlu_pro_tiger_responses"
STEADY = "deepseek_may2024_cot5shot.jsonl.gz"


def lacks_record(question_id: int | str) -> bool:
    """Whether `flaky` lacks this question: a fixed 15% of MMLU-Pro, drawn by hash."""
    return zlib.crc32(str(question_id).encode()) % 100 < 15


def flaky_pool(folder: Path) -> Registry:
    """gemini-1.5-flash (the strongest recorded expert, 0.64) with 15% of its answers gone, and deepseek
    (0.60) whole: charged for its gaps (0.64 × 0.85 ≈ 0.54), the flaky one is no longer the best."""
    with gzip.open(RECORDED / "gemini-1.5-flash-002_5shots.jsonl.gz", "rt") as source:
        lines = [line for line in source if not lacks_record(json.loads(line)["question_id"])]
    with gzip.open(folder / "flaky.jsonl.gz", "wt") as target:
        target.writelines(lines)
    path = folder / "pool.yaml"
    path.write_text(
        "experts:\n"
        f"  - {{id: flaky, base: a, backend: {{kind: replay, responses: {folder / 'flaky.jsonl.gz'}}}}}\n"
        f"  - {{id: steady, base: b, backend: {{kind: replay, responses: {RECORDED / STEADY}}}}}\n"
    )
    return Registry.from_file(path)
