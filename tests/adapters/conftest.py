"""The SmolLM2 base as a float32 Hugging Face folder (what adapters train on), built once per session."""

from pathlib import Path

import pytest

from coe.adapters.train import training_base_folder
from coe.backends.llamacpp import LlamaCppBackend
from coe.registry import Registry


@pytest.fixture(scope="session")
def smollm2_folder(embedded_pool: Registry, embedded_backend: LlamaCppBackend, weights_cache: Path) -> Path:
    return training_base_folder(embedded_backend.model_path(embedded_pool["smollm2-135m"]), weights_cache)
