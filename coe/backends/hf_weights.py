"""GGUF weights dequantized into a Hugging Face folder, for engines that load HF models (vLLM, peft).

The shipped weights packages hold GGUF files only, and no model hub is reachable here, so the HF
folder vLLM needs is built from them: transformers reads the GGUF (`gguf_file=`), and the
dequantized state dict, config and tokenizer are written as a plain safetensors folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from coe.errors import BackendUnavailableError

COMPLETE_MARKER = ".coe-export-ok"


def export_hf_folder(gguf: Path, out: Path, *, dtype: str = "bfloat16") -> Path:
    """Write `gguf` as a Hugging Face model folder at `out`; free when `out` was already written."""
    out = Path(out)
    if (out / COMPLETE_MARKER).is_file():
        return out
    if not Path(gguf).is_file():
        raise BackendUnavailableError(f"GGUF file {gguf} does not exist; nothing to convert")
    folder, name = str(Path(gguf).parent), Path(gguf).name
    try:  # transformers imports the `gguf` package only when it reads the file
        import torch
        import transformers
        from safetensors.torch import save_file

        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=getattr(torch, dtype))
    except ImportError as error:
        raise BackendUnavailableError(
            f"converting GGUF weights to a Hugging Face folder needs torch, transformers and gguf ({error}): "
            "pip install 'coe[train]', or see README, 'vLLM backend'"
        ) from error
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    # transformers 5 refuses `save_pretrained` on a GGUF-loaded model, so the parts are written one by one.
    state = model.state_dict()
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # tied to the embeddings: stored once, as HF checkpoints do
    save_file({key: tensor.contiguous() for key, tensor in state.items()}, staging / "model.safetensors")
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the folder holds plain dequantized tensors
    config.dtype = dtype
    config.save_pretrained(staging)
    model.generation_config.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / COMPLETE_MARKER).write_text(f"exported from {Path(gguf).name}\n")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out
