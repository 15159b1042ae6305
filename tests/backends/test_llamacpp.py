"""The embedded backend on real GGUF models (SmolLM2 135M, Gemma 3 270M)."""

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from coe.backends.llamacpp import LlamaCppBackend
from coe.backends.weights import KNOWN_WEIGHTS, locate_weights
from coe.errors import BackendUnavailableError, UnknownNameError
from coe.registry import Registry
from coe.schema import EmbeddedBackendSpec, ExpertSpec
from coe.types import GenerationParams, Prompt

PARAMS = GenerationParams(max_tokens=24)
PROMPTS = [
    Prompt("What is the capital of France? Answer in one word."),
    Prompt("Name a primary colour."),
    Prompt("2 + 2 ="),
]


def test_real_model_generates_text_with_token_counts(
    embedded_backend: LlamaCppBackend, embedded_pool: Registry
) -> None:
    outputs = embedded_backend.generate(embedded_pool["smollm2-135m"], PROMPTS, PARAMS)
    assert len(outputs) == 3
    for output in outputs:
        assert output.ok and output.text.strip()
        assert output.n_prompt_tokens > 5
        assert 0 < output.n_completion_tokens <= 24
        assert output.latency_s > 0
    assert "Paris" in outputs[0].text


def test_greedy_generation_is_deterministic_and_order_preserving(
    embedded_backend: LlamaCppBackend, embedded_pool: Registry
) -> None:
    expert = embedded_pool["smollm2-135m"]
    first = [g.text for g in embedded_backend.generate(expert, PROMPTS, PARAMS)]
    again = [g.text for g in embedded_backend.generate(expert, PROMPTS, PARAMS)]
    reversed_ = [g.text for g in embedded_backend.generate(expert, PROMPTS[::-1], PARAMS)]
    assert first == again
    assert reversed_ == first[::-1]


def test_a_model_loads_once_and_is_reused(embedded_backend: LlamaCppBackend, embedded_pool: Registry) -> None:
    expert = embedded_pool["smollm2-135m"]
    embedded_backend.load(expert)
    assert embedded_backend.is_loaded(expert)
    again = embedded_backend.load(expert)
    assert again.loaded is False and again.seconds == 0.0


def test_base_model_runs_completion_style(embedded_backend: LlamaCppBackend, embedded_pool: Registry) -> None:
    expert = embedded_pool["gemma3-270m"]
    report = embedded_backend.load(expert)
    assert report.n_bytes > 200_000_000 or report.loaded is False
    [output] = embedded_backend.generate(
        expert, [Prompt("Question: What is the capital of France?\nAnswer:")], GenerationParams(max_tokens=8)
    )
    assert output.ok and "Paris" in output.text
    embedded_backend.unload(expert)
    assert not embedded_backend.is_loaded(expert)


def test_two_models_give_different_answers(embedded_backend: LlamaCppBackend, embedded_pool: Registry) -> None:
    small, gemma = embedded_pool["smollm2-135m"], embedded_pool["gemma3-270m"]
    prompt = [Prompt("Write one sentence about the sea.")]
    assert (
        embedded_backend.generate(small, prompt, PARAMS)[0].text
        != embedded_backend.generate(gemma, prompt, PARAMS)[0].text
    )


def test_the_registry_context_is_the_context_llama_cpp_runs_with(embedded_backend: LlamaCppBackend) -> None:
    """One source of truth: `context:` of the registry entry is llama.cpp's n_ctx, above 4096 too."""
    expert = ExpertSpec(
        id="long-ctx", base="smollm2", backend=EmbeddedBackendSpec(weights="smollm2-135m-instruct-q4_1"), context=6144
    )
    try:
        served = httpx.get(f"{embedded_backend.address(expert)}/props", timeout=30).json()
        assert served["default_generation_settings"]["n_ctx"] == 6144
    finally:
        embedded_backend.unload(expert)


def test_prompt_longer_than_context_fails_alone(embedded_backend: LlamaCppBackend, tmp_path: Path) -> None:
    expert = ExpertSpec(
        id="tiny-ctx",
        base="smollm2",
        backend=EmbeddedBackendSpec(weights="smollm2-135m-instruct-q4_1"),
        context=128,
    )
    outputs = embedded_backend.generate(expert, [Prompt("word " * 400), Prompt("Hi")], PARAMS)
    assert outputs[0].error is not None and "context" in outputs[0].error.message
    assert outputs[0].error.kind == "too_long"
    assert outputs[1].ok
    embedded_backend.unload(expert)


def test_missing_gguf_file_is_a_clear_error(tmp_path: Path) -> None:
    expert = ExpertSpec(id="ghost", base="ghost", backend=EmbeddedBackendSpec(gguf=tmp_path / "ghost.gguf"))
    with pytest.raises(BackendUnavailableError, match=r"ghost\.gguf does not exist"):
        LlamaCppBackend(cache_dir=tmp_path).load(expert)


def test_weights_lookup(tmp_path: Path) -> None:
    assert set(KNOWN_WEIGHTS) == {"smollm2-135m-instruct-q4_1", "gemma3-270m-q4_k_m"}
    assert locate_weights("smollm2-135m-instruct-q4_1", tmp_path).name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    with pytest.raises(UnknownNameError, match="unknown weights package 'llama-9000'"):
        locate_weights("llama-9000", tmp_path)


UNLOAD_RIGHT_AFTER_LOAD = """
import sys
from pathlib import Path
from coe.backends.llamacpp import LlamaCppBackend
from coe.schema import EmbeddedBackendSpec, ExpertSpec
expert = ExpertSpec(
    id="quick", base="smollm2", backend=EmbeddedBackendSpec(weights="smollm2-135m-instruct-q4_1"), context=512
)
with LlamaCppBackend(cache_dir=Path(sys.argv[1])) as backend:
    for _ in range(10):
        assert backend.load(expert).loaded
        backend.unload(expert)
print("done")
"""


def test_unloading_right_after_loading_does_not_hang(weights_cache: Path) -> None:
    # Without the start-up barrier in `_start_server` this hung within four cycles, every time,
    # inside xllamacpp's destructor (holding the GIL): only a child process can be timed out.
    finished = subprocess.run(
        [sys.executable, "-c", UNLOAD_RIGHT_AFTER_LOAD, str(weights_cache)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.strip() == "done"
