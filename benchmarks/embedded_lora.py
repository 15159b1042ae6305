"""What the LoRA benchmarks share: the embedded-LoRA pool and a stratified sample of MMLU-Pro test questions."""

from __future__ import annotations

from pathlib import Path

from coe.datasets import load_mmlu_pro
from coe.registry import Registry
from coe.schema import Query
from coe.settings import Settings, apply_offline_environment
from coe.splits import stratified_sample

POOL = Path(__file__).resolve().parents[1] / "registry" / "embedded-lora.yaml"


def pool_and_questions(n_questions: int, seed: int) -> tuple[Settings, Registry, list[Query]]:
    """Settings (from COE_* variables, offline), the pool, and `n_questions` test questions in file order."""
    apply_offline_environment()
    settings = Settings()
    pool = Registry.from_file(POOL, settings.data_dir)
    queries = load_mmlu_pro("test", settings.data_dir)
    picked = set(stratified_sample(queries, n_questions, seed))
    return settings, pool, [query for query in queries if query.id in picked]
