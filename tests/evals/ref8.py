"""Evaluation settings on the reference replay pool, for tests that vary only the rest."""

from typing import Any

from coe.evals.config import EvalConfig
from tests.conftest import REPO

REF8 = REPO / "registry" / "replay-mmlu-pro-ref8.yaml"


def ref8_config(**fields: Any) -> EvalConfig:
    """MMLU-Pro on ref8, profiled on `random:1400:0`, with `fields` for the rest."""
    return EvalConfig.model_validate({"bench": "mmlu-pro", "pool": str(REF8), "split": "random:1400:0", **fields})
