"""A PEFT LoRA folder as a GGUF LoRA adapter, the form llama.cpp applies per request at run time.

Written with the `gguf` package (llama.cpp's own format library): one `<model tensor>.lora_a` and
`.lora_b` pair per adapted matrix, `general.type = adapter`, `adapter.type = lora` and
`adapter.lora.alpha`, so llama.cpp scales each pair by alpha / rank as peft does. llama.cpp keeps
Llama's query and key projections with their rows permuted for its rope layout (transformers undoes
that when it reads a GGUF, so peft trains in the Hugging Face layout); `lora_b` of those two
projections gets the same row permutation here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coe.errors import BackendUnavailableError, ConfigError

ADAPTER_GGUF = "adapter.gguf"
_PEFT_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")


@dataclass(frozen=True, slots=True)
class _Architecture:
    gguf_name: str
    permuted_rows: dict[str, str]
    """projection name -> the config key holding its number of heads (rows permuted by llama.cpp)."""


ARCHITECTURES = {
    "llama": _Architecture("llama", {"q_proj": "num_attention_heads", "k_proj": "num_key_value_heads"}),
}


def peft_to_gguf(adapter_dir: Path, base_config: Path, out: Path, *, dtype: str = "float16") -> Path:
    """Convert the PEFT adapter in `adapter_dir` (trained on the model `base_config` describes)."""
    gguf, load_safetensors = _import_gguf()
    adapter_dir = Path(adapter_dir)
    settings = json.loads((adapter_dir / "adapter_config.json").read_text())
    config = json.loads(Path(base_config).read_text())
    architecture = convertible_architecture(config)
    unsupported = [k for k in ("use_rslora", "use_dora", "rank_pattern", "alpha_pattern") if settings.get(k)]
    if unsupported:
        raise ConfigError(f"{adapter_dir}: LoRA options {unsupported} have no GGUF form; train without them")
    arch = next(a for a, name in gguf.MODEL_ARCH_NAMES.items() if name == architecture.gguf_name)
    names = gguf.get_tensor_name_map(arch, int(config["num_hidden_layers"]))
    tensors = load_safetensors(str(adapter_dir / "adapter_model.safetensors"))
    staging = Path(out).with_name(Path(out).name + ".partial")
    writer = gguf.GGUFWriter(str(staging), architecture.gguf_name)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(settings["lora_alpha"]))
    for key in sorted(tensors):
        name, array = _gguf_tensor(key, tensors[key], names, architecture, config)
        writer.add_tensor(name, np.ascontiguousarray(array, dtype=np.dtype(dtype)))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    staging.replace(out)
    return Path(out)


def convertible_architecture(config: dict[str, Any]) -> _Architecture:
    """The GGUF architecture of a base model's config; checked before training, not after."""
    architecture = ARCHITECTURES.get(config.get("model_type", ""))
    if architecture is None:
        raise ConfigError(
            f"cannot convert a LoRA for model type {config.get('model_type')!r} to GGUF; "
            f"supported: {', '.join(sorted(ARCHITECTURES))}"
        )
    return architecture


def _gguf_tensor(
    key: str, array: np.ndarray, names: Any, architecture: _Architecture, config: dict[str, Any]
) -> tuple[str, np.ndarray]:
    found = _PEFT_KEY.match(key)
    if found is None:
        raise ConfigError(f"unexpected tensor {key!r} in a PEFT LoRA adapter (only lora_A/lora_B weights convert)")
    module, part = found["module"], found["part"]
    target = names.get_name(module + ".weight", try_suffixes=(".weight",))
    if target is None:
        raise ConfigError(f"LoRA on {module!r}: llama.cpp has no tensor for it; train other target modules")
    projection = module.rsplit(".", 1)[-1]
    if part == "B" and projection in architecture.permuted_rows:
        array = permute_rows(array, int(config[architecture.permuted_rows[projection]]))
    return f"{target}.lora_{part.lower()}", array


def permute_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's rope layout: within each head, interleaved row pairs become two halves."""
    rows = weight.shape[0]
    return weight.reshape(n_heads, 2, rows // n_heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _import_gguf() -> tuple[Any, Any]:
    try:
        import gguf
        from safetensors.numpy import load_file
    except ImportError as error:
        raise BackendUnavailableError(
            f"converting adapters to GGUF needs the gguf and safetensors packages ({error}): pip install 'coe[train]'"
        ) from error
    return gguf, load_file
