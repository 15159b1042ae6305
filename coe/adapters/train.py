"""Train a LoRA adapter with peft on an embedded (GGUF) base, and ship it in both forms.

The base is dequantized once into a Hugging Face folder in the cache (transformers reads GGUF),
so the adapter learns on the very weights llama.cpp serves. Examples are rendered exactly as the
embedded backend prompts that expert (its chat template and system prompt, or raw completion
text), and only the response tokens are scored. The output folder holds the PEFT adapter (what
vLLM loads), `adapter.gguf` (what llama.cpp loads) and `training.json` (how it was made).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from coe.adapters.convert import ADAPTER_GGUF, convertible_architecture, peft_to_gguf
from coe.adapters.data import Example
from coe.backends.hf_weights import export_hf_folder
from coe.backends.llamacpp import LlamaCppBackend
from coe.errors import BackendUnavailableError, ConfigError, DatasetError
from coe.schema import EmbeddedBackendSpec, ExpertSpec

TRAINING_RECORD = "training.json"
IGNORED = -100  # label of a token that is not scored (prompt, padding)


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """LoRA and optimiser settings; the defaults teach a narrow skill in a few minutes on 2 cores."""

    steps: int = 120
    batch_size: int = 8
    learning_rate: float = 1e-3
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    max_tokens: int = 1024
    """Examples longer than this (prompt and response, in tokens) are skipped."""
    seed: int = 0
    threads: int = 0
    """CPU threads for torch; 0 uses every core."""
    bf16: bool = True
    """Compute in bfloat16 (autocast; the weights stay float32): about 3x faster on CPUs with AVX512-BF16."""


@dataclass(frozen=True, slots=True)
class TrainReport:
    base: str
    """The base expert's id (its model name when `train_lora` is called on its own)."""
    n_examples: int
    n_skipped: int
    n_trainable: int
    steps: int
    seconds: float
    losses: tuple[float, ...] = field(repr=False)
    adapter_bytes: int = 0

    @property
    def final_loss(self) -> float:
        """Mean loss of the last ten steps (one step is noisy)."""
        tail = self.losses[-10:]
        return float(np.mean(tail)) if tail else float("nan")


def build_adapter(
    base: ExpertSpec,
    examples: Sequence[Example],
    out_dir: Path,
    config: TrainConfig,
    *,
    cache_dir: Path,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainReport:
    """Train on `examples`, then write the PEFT adapter, its GGUF form and the training record."""
    spec = _embedded_base(base)
    gguf = LlamaCppBackend(cache_dir=cache_dir).model_path(base)
    folder = training_base_folder(gguf, cache_dir)
    convertible_architecture(json.loads((folder / "config.json").read_text()))
    out_dir = Path(out_dir)
    report = train_lora(folder, examples, out_dir, config, spec=spec, base_name=base.base, on_step=on_step)
    adapter = peft_to_gguf(out_dir, folder / "config.json", out_dir / ADAPTER_GGUF)
    report = replace(report, base=base.id, adapter_bytes=adapter.stat().st_size)
    record = {
        **asdict(report),
        "final_loss": report.final_loss,
        "base_weights": gguf.name,
        "examples_sha256": hashlib.sha256(json.dumps([asdict(e) for e in examples]).encode()).hexdigest(),
        "config": asdict(config),
    }
    (out_dir / TRAINING_RECORD).write_text(json.dumps(record, indent=1) + "\n")
    return report


def training_base_folder(gguf: Path, cache_dir: Path) -> Path:
    """The base's weights as a float32 Hugging Face folder in the cache (built once, then reused)."""
    return export_hf_folder(gguf, Path(cache_dir) / "hf" / f"{Path(gguf).stem}-float32", dtype="float32")


def train_lora(
    base_folder: Path,
    examples: Sequence[Example],
    out_dir: Path,
    config: TrainConfig,
    *,
    spec: EmbeddedBackendSpec,
    base_name: str,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainReport:
    """Fit a LoRA adapter on `examples` and save it as a PEFT folder in `out_dir`."""
    torch, transformers, peft = _import_training()
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads or os.cpu_count() or 1)
    tokenizer = transformers.AutoTokenizer.from_pretrained(base_folder)
    encoded = [render(tokenizer, spec, example) for example in examples]
    kept = [pair for pair in encoded if len(pair[0]) + len(pair[1]) <= config.max_tokens]
    if not kept:
        raise DatasetError(f"every example is longer than max_tokens={config.max_tokens}; raise --max-tokens")
    model = transformers.AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32)
    lora = peft.LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        target_modules=list(config.targets),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        with warnings.catch_warnings():  # transformers deprecates a name peft still calls
            warnings.filterwarnings("ignore", ".*is_gradient_checkpointing.*", FutureWarning)
            model = peft.get_peft_model(model, lora)
    except ValueError as error:
        raise ConfigError(f"LoRA targets {list(config.targets)} do not fit {base_name}: {error}") from error
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=0.0)
    warmup = max(1, config.steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * max(0.0, 1 - step / config.steps)
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batches = _batches(len(kept), min(config.batch_size, len(kept)), config.steps, config.seed)
    model.train()
    losses = []
    started = time.perf_counter()
    for step, indices in enumerate(batches):
        ids, mask, positions, labels = (torch.tensor(a) for a in collate([kept[i] for i in indices], pad_id))
        keep = int((labels != IGNORED).sum(dim=1).max()) + 1  # logits only where responses are scored
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep).logits
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]),
            labels[:, -keep + 1 :].reshape(-1),
            ignore_index=IGNORED,
        )
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(round(float(loss.detach()), 4))
        if on_step is not None:
            on_step(step + 1, losses[-1])
    seconds = time.perf_counter() - started
    for parameter in trainable:  # float16 halves the files; llama.cpp's GGUF holds float16 anyway
        parameter.data = parameter.data.to(torch.float16)
    model.peft_config["default"].base_model_name_or_path = base_name
    model.save_pretrained(out_dir, save_embedding_layers=False)  # "auto" would look the base up on the hub
    (Path(out_dir) / "README.md").unlink(missing_ok=True)  # peft's model-card template, empty here
    return TrainReport(
        base=base_name,
        n_examples=len(kept),
        n_skipped=len(encoded) - len(kept),
        n_trainable=sum(p.numel() for p in trainable),
        steps=config.steps,
        seconds=round(seconds, 1),
        losses=tuple(losses),
    )


def render(tokenizer: Any, spec: EmbeddedBackendSpec, example: Example) -> tuple[list[int], list[int]]:
    """Prompt and response token ids, the prompt exactly as the embedded backend sends it."""
    if spec.prompt_format == "completion":
        prompt = tokenizer(example.prompt, add_special_tokens=True).input_ids
        response = tokenizer(example.response, add_special_tokens=False).input_ids
        return prompt, [*response, tokenizer.eos_token_id]
    system = [{"role": "system", "content": spec.system_prompt}] if spec.system_prompt else []
    messages = [*system, {"role": "user", "content": example.prompt}]
    prompt_text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": example.response}], tokenize=False
    )
    if not full_text.startswith(prompt_text):
        raise ConfigError("the base's chat template renders the answer turn differently from the prompt turn")
    response_text = full_text[len(prompt_text) :]
    end = response_text.find(tokenizer.eos_token)
    if end >= 0:  # stop at the end-of-turn token: what follows is never generated
        response_text = response_text[: end + len(tokenizer.eos_token)]
    prompt = tokenizer(prompt_text, add_special_tokens=False).input_ids
    return prompt, tokenizer(response_text, add_special_tokens=False).input_ids


def collate(
    pairs: Sequence[tuple[list[int], list[int]]], pad_id: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Left-padded input ids, attention mask, position ids and labels (responses end every row,
    so the scored tokens are the last columns)."""
    length = max(len(prompt) + len(response) for prompt, response in pairs)
    ids = np.full((len(pairs), length), pad_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    labels = np.full_like(ids, IGNORED)
    for row, (prompt, response) in enumerate(pairs):
        sequence = prompt + response
        ids[row, length - len(sequence) :] = sequence
        mask[row, length - len(sequence) :] = 1
        labels[row, length - len(response) :] = response
    positions = np.maximum(mask.cumsum(axis=1) - 1, 0)
    return ids, mask, positions, labels


def _batches(n_examples: int, batch_size: int, steps: int, seed: int) -> list[np.ndarray]:
    """`steps` batches of example indices: shuffled epochs, reshuffled each epoch."""
    rng = np.random.default_rng(seed)
    order: list[int] = []
    while len(order) < steps * batch_size:
        order.extend(rng.permutation(n_examples).tolist())
    return [np.array(order[i * batch_size : (i + 1) * batch_size]) for i in range(steps)]


def _embedded_base(expert: ExpertSpec) -> EmbeddedBackendSpec:
    if expert.is_adapter or not isinstance(expert.backend, EmbeddedBackendSpec):
        raise ConfigError(
            f"expert {expert.id!r} cannot be an adapter's base: adapters are trained on embedded "
            f"(GGUF) experts that are not adapters themselves (its backend: {expert.backend_kind!r})"
        )
    return expert.backend


def _import_training() -> tuple[Any, Any, Any]:
    try:
        import peft
        import torch
        import transformers
    except ImportError as error:
        raise BackendUnavailableError(
            f"training adapters needs torch, transformers and peft ({error}): pip install 'coe[train]'"
        ) from error
    return torch, transformers, peft
