"""vLLM backend cost on this machine: engine start, then greedy decoding throughput by batch size.

Run in the vLLM virtualenv (see README, 'vLLM backend'):

    .venv-vllm/bin/python -m benchmarks.vllm_backend

SmolLM2-135M-Instruct is dequantized from its shipped GGUF into a Hugging Face folder (cached).
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

from coe.backends.hf_weights import export_hf_folder
from coe.backends.vllm import VllmBackend
from coe.backends.weights import locate_weights
from coe.schema import ExpertSpec, VllmBackendSpec
from coe.settings import apply_offline_environment
from coe.types import GenerationParams, Prompt

CACHE = Path(os.path.expanduser("~/.cache/coe"))
BATCH_SIZES = (1, 8, 32)
MAX_TOKENS = 128
TOPICS = ("the sea", "mountains", "a city at night", "bread", "rain", "a library", "winter", "trains")


def main() -> None:
    apply_offline_environment()
    folder = export_hf_folder(
        locate_weights("smollm2-135m-instruct-q4_1", CACHE), CACHE / "hf" / "smollm2-135m-instruct"
    )
    spec = VllmBackendSpec(model=str(folder), kv_cache_gib=1, enforce_eager=True)
    expert = ExpertSpec(id="smollm2-vllm", base="HuggingFaceTB/SmolLM2-135M-Instruct", backend=spec, context=1024)
    params = GenerationParams(max_tokens=MAX_TOKENS)
    rows = []
    with VllmBackend() as backend:
        start_s = backend.load(expert).seconds
        backend.generate(expert, [Prompt("Hello")], GenerationParams(max_tokens=4))  # warm-up
        for size in BATCH_SIZES:
            prompts = [Prompt(f"Write a long story about {TOPICS[i % len(TOPICS)]}.") for i in range(size)]
            started = time.perf_counter()
            outputs = backend.generate(expert, prompts, params)
            wall_s = time.perf_counter() - started
            n_tokens = sum(o.n_completion_tokens for o in outputs)
            rows.append((size, n_tokens, wall_s, n_tokens / wall_s))
    print(f"command: {' '.join([Path(sys.executable).name, '-m', 'benchmarks.vllm_backend'])}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}")
    print(f"model: SmolLM2-135M-Instruct (bf16 from Q4_1 GGUF), max_tokens={MAX_TOKENS}, greedy")
    print(f"engine start: {start_s:.1f} s")
    print(f"{'batch':>5}  {'tokens':>6}  {'wall s':>7}  {'tokens/s':>8}")
    for size, n_tokens, wall_s, rate in rows:
        print(f"{size:>5}  {n_tokens:>6}  {wall_s:>7.2f}  {rate:>8.1f}")


if __name__ == "__main__":  # vLLM's CPU engine spawns processes that re-import this module
    main()
