"""Routing throughput and latency per encoder and router, beside the cost of embedding the queries alone:

    .venv/bin/python -m benchmarks.routing [--encoders minilm static] [--sizes 1 100 10000]
    taskset -c 0 .venv/bin/python -m benchmarks.routing --sizes 1 100 1000   # one core

Routers are fitted on 1,400 MMLU-Pro profiling items (the reference pool's recorded outcomes, split
`random:1400:0`) and route 1, 100 and 10,000 test questions (`--sizes`), first uncached (no query embedded yet;
each router gets questions of its own) then cached (the same questions again). "embedding only" is
the floor: the encoder alone on the same number of questions. Embedding 10,000 questions with MiniLM
takes minutes on 2 cores, so the largest size is embedded once per encoder: routers route it cached, and their
uncached time is the floor plus their routing work (cached time minus the cached embedding look-up).
Encoders run one after the other in the same process, so they share the machine's load (printed).
One query's row is the median of single-query calls: for a router, a routing decision with its
embedding. The last line gives, per encoder, that median for the fastest embedding router and the
uncached rate over the largest size. Embeddings go to a temporary cache (the user's is not touched);
the static encoder's distilled table is loaded from the user's cache dir (distilled there if absent).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks.routing_quality import POOL, correctness, recorded_letters
from coe.compose import CompositionBuilder, RouterSpec
from coe.datasets import load_mmlu_pro
from coe.embed import ENCODERS, Encoder, make_encoder
from coe.outcomes import Outcomes
from coe.registry import Registry
from coe.routers import Router
from coe.schema import Query
from coe.settings import Settings, apply_offline_environment
from coe.splits import make_split

SIZES = (1, 100, 10_000)
SINGLE_REPEATS = 20
"""One query's latency is the median over this many single-query calls."""
EMBEDDING_ROUTERS = ("knn", "skill", "classifier")
OTHER_ROUTERS = ("best-single", "random")
Row = tuple[str, str, int, float, float, str]
"""encoder, router, queries, cached seconds, uncached seconds, how the uncached time was obtained."""


def seconds_for(size: int, run: Callable[[Sequence[Query]], object], queries: Sequence[Query]) -> float:
    """Wall seconds to handle `size` queries in one call; for one query, the median of single calls."""
    calls = [[query] for query in queries[:SINGLE_REPEATS]] if size == 1 else [list(queries[:size])]
    times = []
    for batch in calls:
        started = time.perf_counter()
        run(batch)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def uncached_then_cached(
    size: int, run: Callable[[Sequence[Query]], object], queries: Sequence[Query]
) -> tuple[float, float]:
    return seconds_for(size, run, queries), seconds_for(size, run, queries)


def profiling_outcomes(settings: Settings, registry: Registry, queries: Sequence[Query]) -> tuple[Outcomes, list]:
    assert settings.data_dir is not None, "set COE_DATA_DIR to the shared data folder"
    correct = correctness(recorded_letters(settings.data_dir, registry, queries)[0], queries)
    row_of = {query.id: i for i, query in enumerate(queries)}
    split = make_split("random:1400:0", queries, "mmlu-pro")
    rows = [row_of[i] for i in split.profile_ids]
    profiling = Outcomes(tuple(registry.experts), tuple(queries[i] for i in rows), correct[rows])
    return profiling, [queries[row_of[i]] for i in split.test_ids]


def measure(encoder: Encoder, routers: dict[str, Router], tests: list[Query], sizes: Sequence[int]) -> list[Row]:
    """Every router at every size; each uncached measurement embeds questions never seen before."""
    rows: list[Row] = []
    position = 0

    def take(size: int) -> list[Query]:
        nonlocal position
        taken = tests[position : position + max(size, SINGLE_REPEATS)]
        position += len(taken)
        return taken

    largest = max(sizes)
    for size in sizes:
        questions = take(size)
        uncached, cached = uncached_then_cached(size, lambda qs: encoder.encode([q.text for q in qs]), questions)
        rows.append((encoder.name, "embedding only (the floor)", size, cached, uncached, "measured"))
        for name, router in routers.items():
            if size == largest or name in OTHER_ROUTERS:
                routed = seconds_for(size, router.route, questions)
                work = max(routed - cached, 0.0) if name in EMBEDDING_ROUTERS else routed
                floor = uncached if name in EMBEDDING_ROUTERS else 0.0
                how = "floor + routing work" if name in EMBEDDING_ROUTERS else "nothing to embed"
                rows.append((encoder.name, name, size, routed, floor + work, how))
            else:
                own = take(size)
                route_uncached, route_cached = uncached_then_cached(size, router.route, own)
                rows.append((encoder.name, name, size, route_cached, route_uncached, "measured"))
    return rows


def measure_encoder(
    name: str, settings: Settings, profiling: Outcomes, tests: list[Query], sizes: Sequence[int]
) -> tuple[list[Row], float]:
    """The rows of one encoder over a fresh temporary embedding cache, and how long a new process
    takes to load its largest batch of cached embeddings from disk and look them up."""
    tables = settings.cache_dir / "encoders"
    tables.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        cache = Path(folder)
        (cache / "encoders").symlink_to(tables, target_is_directory=True)  # a distilled table is reused and kept
        builder = CompositionBuilder(settings.model_copy(update={"cache_dir": cache}))
        encoder = builder.encoder(name).load()
        routers = {
            router: builder.router(RouterSpec(name=router), profiling, k=3, seed=0, bench="mmlu-pro", encoder=name)
            for router in (*EMBEDDING_ROUTERS, *OTHER_ROUTERS)
        }
        rows = measure(encoder, routers, tests, sizes)
        started = time.perf_counter()
        make_encoder(name, cache_dir=cache).encode([q.text for q in tests[: max(sizes)]])
        return rows, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--encoders", nargs="+", choices=list(ENCODERS), default=list(ENCODERS))
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES), help="queries per measurement")
    args = parser.parse_args()
    apply_offline_environment()
    settings = Settings()
    registry = Registry.from_file(POOL, settings.data_dir)
    queries = load_mmlu_pro("test", settings.data_dir)
    profiling, tests = profiling_outcomes(settings, registry, queries)
    load_before = os.getloadavg()[0]
    rows: list[Row] = []
    from_disk: dict[str, float] = {}
    for name in args.encoders:
        encoder_rows, from_disk[name] = measure_encoder(name, settings, profiling, tests, args.sizes)
        rows.extend(encoder_rows)
    print_table(rows, from_disk, (load_before, os.getloadavg()[0]))


def print_table(rows: Sequence[Row], from_disk_s: dict[str, float], load: tuple[float, float]) -> None:
    print(f"# python -m benchmarks.routing {' '.join(sys.argv[1:])}".rstrip())
    cores = len(os.sched_getaffinity(0))
    print(
        f"# machine: {platform.machine()}, {os.cpu_count()} cores ({cores} usable by this process),"
        f" Python {platform.python_version()}; load average {load[0]:.1f} before, {load[1]:.1f} after"
    )
    print(
        f"{'encoder':8s} {'router':28s} {'queries':>7s} {'cached s':>9s} {'cached q/s':>11s}"
        f" {'uncached s':>11s} {'uncached q/s':>12s}"
    )
    for encoder, name, size, cached_s, uncached_s, how in rows:
        cached_rate = size / cached_s if cached_s else float("inf")
        uncached_rate = size / uncached_s if uncached_s else float("inf")
        print(
            f"{encoder:8s} {name:28s} {size:7d} {cached_s:9.4f} {cached_rate:11.0f}"
            f" {uncached_s:11.3f} {uncached_rate:12.1f}  {how}"
        )
    largest = max(size for _, _, size, _, _, _ in rows)
    summary = []
    for encoder, seconds in from_disk_s.items():
        own = [row for row in rows if row[0] == encoder]
        floor_cached, floor_uncached = next((c, u) for _, n, s, c, u, _ in own if s == largest and n.startswith("emb"))
        work = {n: max(c - floor_cached, 0.0) for _, n, s, c, _, _ in own if s == largest and n in EMBEDDING_ROUTERS}
        single = {n: u for _, n, s, _, u, _ in own if s == 1 and n in EMBEDDING_ROUTERS}
        fastest = min(single, key=single.__getitem__)
        print(
            f"# {encoder}: a new process loads {largest} cached embeddings from disk and looks them up in"
            f" {seconds:.3f} s; routing work for {largest} queries: "
            + ", ".join(f"{n} {w:.2f} s" for n, w in work.items())
        )
        summary.append(
            f"{encoder}: one query {1000 * single[fastest]:.2f} ms ({fastest}, p50),"
            f" {largest / floor_uncached:.0f} uncached q/s"
        )
    print("; ".join(summary))


if __name__ == "__main__":
    main()
