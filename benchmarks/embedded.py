"""Embedded models through coe versus the engine used directly: load time and tokens per second.

    .venv/bin/python -m benchmarks.embedded [--rounds 3] [--max-tokens 128]

Both sides run the same GGUF files, the same prompts (MMLU-Pro validation questions in coe's
prompt), greedy, one request at a time, with the same threads; rounds alternate which side goes
first and the table shows the median of the rounds, side by side from one run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

from coe.answers import question_prompt
from coe.backends.llamacpp import LlamaCppBackend
from coe.datasets import load_mmlu_pro
from coe.registry import Registry
from coe.resources import bundled_pools
from coe.schema import EmbeddedBackendSpec, ExpertSpec
from coe.settings import Settings
from coe.types import GenerationParams, Prompt


def direct(path: Path, expert: ExpertSpec, prompts: list[Prompt], max_tokens: int, threads: int) -> tuple[float, float]:
    """(load seconds, completion tokens per second) with xllamacpp alone."""
    import xllamacpp as xlc

    spec = expert.backend
    assert isinstance(spec, EmbeddedBackendSpec)
    started = time.perf_counter()
    params = xlc.CommonParams()
    params.model.path = str(path)
    params.n_ctx = expert.context
    params.n_parallel = 1
    params.cache_prompt = False
    params.verbosity = 0
    params.port = 0
    params.hostnames = ["127.0.0.1"]
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    server = xlc.Server(params)
    load_s = time.perf_counter() - started
    tokens, seconds = 0, 0.0
    for prompt in prompts:
        request = {"max_tokens": max_tokens, "temperature": 0, "top_k": 1, "cache_prompt": False}
        started = time.perf_counter()
        if spec.prompt_format == "chat":
            result = server.handle_chat_completions({**request, "messages": [{"role": "user", "content": prompt.text}]})
        else:
            result = server.handle_completions({**request, "prompt": prompt.text, "stop": ["\nQuestion:", "\n\n\n"]})
        seconds += time.perf_counter() - started
        tokens += result["usage"]["completion_tokens"]
    del server
    return load_s, tokens / seconds


def through_coe(
    expert: ExpertSpec, prompts: list[Prompt], max_tokens: int, cache_dir: Path, threads: int
) -> tuple[float, float]:
    with LlamaCppBackend(cache_dir=cache_dir, threads=threads) as backend:
        load_s = backend.load(expert).seconds
        outputs = backend.generate(expert, prompts, GenerationParams(max_tokens=max_tokens))
    return load_s, sum(o.n_completion_tokens for o in outputs) / sum(o.latency_s for o in outputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--prompts", type=int, default=6)
    args = parser.parse_args()
    settings = Settings()
    threads = settings.n_threads
    pool = Registry.from_file(bundled_pools()["embedded"], settings.data_dir)
    prompts = [question_prompt(q) for q in load_mmlu_pro("validation", settings.data_dir)[: args.prompts]]
    backend = LlamaCppBackend(cache_dir=settings.cache_dir)
    rows = []
    for expert in pool.experts:
        path = backend.model_path(expert)
        assert isinstance(expert.backend, EmbeddedBackendSpec)
        runs: dict[str, list[tuple[float, float]]] = {"direct": [], "coe": []}
        for round_ in range(args.rounds):
            order = ["direct", "coe"] if round_ % 2 == 0 else ["coe", "direct"]
            for side in order:
                if side == "direct":
                    runs[side].append(direct(path, expert, prompts, args.max_tokens, threads))
                else:
                    runs[side].append(through_coe(expert, prompts, args.max_tokens, settings.cache_dir, threads))
        medians = {
            side: tuple(statistics.median(v[i] for v in values) for i in (0, 1)) for side, values in runs.items()
        }
        rows.append((expert.id, path.stat().st_size / 1e6, medians["direct"], medians["coe"]))

    print(
        f"# {platform.node()}: {os.cpu_count()} cores, {threads} threads; {args.prompts} MMLU-Pro prompts, "
        f"{args.max_tokens} max tokens, greedy, median of {args.rounds} alternating rounds"
    )
    line = "{:<14} {:>8} {:>14} {:>11} {:>13} {:>10} {:>11}"
    print(line.format("expert", "GGUF MB", "load direct s", "load coe s", "tok/s direct", "tok/s coe", "coe/direct"))
    for expert_id, size, (load_d, tps_d), (load_c, tps_c) in rows:
        cells = (
            f"{size:.0f}",
            f"{load_d:.2f}",
            f"{load_c:.2f}",
            f"{tps_d:.1f}",
            f"{tps_c:.1f}",
            f"{tps_c / tps_d:.2f}",
        )
        print(line.format(expert_id, *cells))


if __name__ == "__main__":
    main()
