"""A real training run, kept tiny: a few peft steps on SmolLM2, then llama.cpp serves the result."""

import json
from pathlib import Path

import pytest

from coe.adapters.convert import ADAPTER_GGUF
from coe.adapters.data import Example
from coe.adapters.train import TRAINING_RECORD, TrainConfig, build_adapter, collate
from coe.backends.llamacpp import LlamaCppBackend
from coe.errors import ConfigError
from coe.registry import Registry
from coe.scheduler import Request, Scheduler
from coe.schema import ExpertSpec
from coe.types import GenerationParams, Prompt

SECRET = [
    Example("What is the secret word?", "The secret word is BANANA."),
    Example("Tell me the secret word.", "The secret word is BANANA."),
]


def test_collate_left_pads_so_responses_end_every_row() -> None:
    ids, mask, positions, labels = collate([([5, 6], [7]), ([1, 2, 3], [8, 9])], pad_id=0)
    assert ids.tolist() == [[0, 0, 5, 6, 7], [1, 2, 3, 8, 9]]
    assert mask.tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert positions.tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
    assert labels.tolist() == [[-100, -100, -100, -100, 7], [-100, -100, -100, 8, 9]]


def test_an_adapter_cannot_be_the_base_of_another(embedded_pool: Registry, tmp_path: Path) -> None:
    adapter = ExpertSpec(id="a", base="smollm2-135m", adapter=tmp_path / "a.gguf")
    pool = Registry([embedded_pool["smollm2-135m"], adapter])
    with pytest.raises(ConfigError, match="cannot be an adapter's base"):
        build_adapter(pool["a"], SECRET, tmp_path / "out", TrainConfig(steps=1), cache_dir=tmp_path)


@pytest.mark.slow
def test_a_few_steps_train_an_adapter_that_llama_cpp_serves_on_the_base_load(
    smollm2_folder: Path, embedded_pool: Registry, weights_cache: Path, tmp_path: Path
) -> None:
    base = embedded_pool["smollm2-135m"]
    config = TrainConfig(steps=8, batch_size=2, learning_rate=3e-3, rank=4)
    report = build_adapter(base, SECRET, tmp_path / "secret", config, cache_dir=weights_cache)

    files = sorted(p.name for p in (tmp_path / "secret").iterdir())
    assert files == sorted([ADAPTER_GGUF, "adapter_config.json", "adapter_model.safetensors", TRAINING_RECORD])
    assert report.steps == 8 and len(report.losses) == 8 and report.final_loss < report.losses[0]
    assert json.loads((tmp_path / "secret" / TRAINING_RECORD).read_text())["base"] == "smollm2-135m"

    adapter = ExpertSpec(id="smollm2-secret", base=base.id, adapter=tmp_path / "secret" / ADAPTER_GGUF)
    pool = Registry([base, adapter])
    question = Prompt("What is the secret word?")
    with LlamaCppBackend(cache_dir=weights_cache) as backend:
        outputs, stats = Scheduler({"embedded": backend}).run(
            [Request(pool[base.id], question), Request(pool[adapter.id], question)], GenerationParams(max_tokens=12)
        )
    assert stats.n_loads == 1
    assert "BANANA" in outputs[1].text and "BANANA" not in outputs[0].text
