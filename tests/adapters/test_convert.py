"""The GGUF conversion is exact: llama.cpp with the converted adapter predicts what peft predicts.

A random LoRA on the query, key and value projections moves SmolLM2's next-token distribution a
lot; llama.cpp (Q4 weights) with the converted adapter must land where peft (float32) lands, as
close as the two engines agree without any adapter. A wrong row permutation of the query/key
`lora_b` (llama.cpp's rope layout) lands far away.
"""

import json
from pathlib import Path

import httpx
import numpy as np
import pytest

from coe.adapters.convert import ADAPTER_GGUF, peft_to_gguf, permute_rows
from coe.adapters.data import Example
from coe.adapters.train import render
from coe.backends.llamacpp import LlamaCppBackend
from coe.errors import ConfigError
from coe.registry import Registry
from coe.schema import ExpertSpec

PROMPTS = ["What is the capital of France?", "Name a color.", "Who wrote Hamlet?", "Describe a cat in one sentence."]


def test_permute_rows_groups_each_heads_interleaved_pairs_into_halves() -> None:
    rows = np.arange(8).reshape(8, 1)  # 2 heads of 4 rows: (0,1,2,3) -> (0,2,1,3)
    assert permute_rows(rows, n_heads=2).ravel().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def test_an_unsupported_architecture_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text(json.dumps({"lora_alpha": 16}))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gemma3_text"}))
    with pytest.raises(ConfigError, match=r"model type 'gemma3_text'.*supported: llama"):
        peft_to_gguf(tmp_path, tmp_path / "config.json", tmp_path / ADAPTER_GGUF)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")  # transformers 5 vs peft
def test_llama_cpp_with_the_converted_adapter_predicts_what_peft_predicts(
    smollm2_folder: Path, embedded_pool: Registry, weights_cache: Path, tmp_path: Path
) -> None:
    import peft
    import torch
    import transformers

    torch.manual_seed(0)
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(smollm2_folder, dtype=torch.float32)
    config = peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj"], init_lora_weights=False)
    lora = peft.get_peft_model(model, config)
    with torch.no_grad():  # random A and B (peft's default B is zero), scaled to move but not wreck the model
        for name, parameter in lora.named_parameters():
            if "lora_B" in name:
                parameter.mul_(0.5)
    lora.save_pretrained(tmp_path, save_embedding_layers=False)
    peft_to_gguf(tmp_path, smollm2_folder / "config.json", tmp_path / ADAPTER_GGUF)

    base = embedded_pool["smollm2-135m"]
    prompts = [render(tokenizer, base.backend, Example(text, "-"))[0] for text in PROMPTS]  # type: ignore[arg-type]
    with torch.no_grad():
        peft_probs = [torch.softmax(lora(torch.tensor([ids])).logits[0, -1], -1).numpy() for ids in prompts]
        with lora.disable_adapter():
            base_probs = [torch.softmax(lora(torch.tensor([ids])).logits[0, -1], -1).numpy() for ids in prompts]

    adapter = ExpertSpec(id="random-lora", base=base.id, adapter=tmp_path / ADAPTER_GGUF, backend=base.backend)
    with LlamaCppBackend(cache_dir=weights_cache) as backend:
        backend.load(base, [adapter])
        url = backend.address(base)
        with_adapter = [_llama_probs(url, ids, scale=1.0) for ids in prompts]
        without = [_llama_probs(url, ids, scale=0.0) for ids in prompts]

    agreement_without_adapters = np.mean([_distance(q, p) for q, p in zip(without, base_probs, strict=True)])
    converted = np.mean([_distance(q, p) for q, p in zip(with_adapter, peft_probs, strict=True)])
    adapter_shift = np.mean([_distance(q, p) for q, p in zip(without, peft_probs, strict=True)])
    assert adapter_shift > 0.2  # the adapter matters
    assert converted < max(1.5 * agreement_without_adapters, 0.08)  # and llama.cpp applies it as peft does


def _llama_probs(url: str, prompt_ids: list[int], scale: float) -> dict[int, float]:
    request = {"prompt": prompt_ids, "max_tokens": 1, "n_probs": 20, "temperature": 0, "cache_prompt": False}
    response = httpx.post(f"{url}/v1/completions", json={**request, "lora": [{"id": 0, "scale": scale}]}, timeout=60)
    top = response.json()["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    return {item["id"]: float(np.exp(item["logprob"])) for item in top}


def _distance(llama: dict[int, float], torch_probs: np.ndarray) -> float:
    """Total variation over llama.cpp's 20 most likely tokens."""
    return float(sum(abs(p - torch_probs[token]) for token, p in llama.items()))
