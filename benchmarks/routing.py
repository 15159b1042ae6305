"""Routing throughput and latency per router, beside the cost of embedding the queries alone:

    .venv/bin/python -m benchmarks.routing

Routers are fitted on 1,400 MMLU-Pro profiling items (the reference pool's recorded outcomes, split
`random:1400:0`) and route 1, 100 and 10,000 test questions, first uncached (no query embedded yet;
each router gets questions of its own) then cached (the same questions again). "embedding only" is
the floor: the encoder alone on the same number of questions. Embedding 10,000 questions takes minutes
on 2 cores, so it is done once: routers route those 10,000 cached, and their uncached time is the floor
plus their routing work (cached time minus the cached embedding look-up). The last line is the routing
work of the fastest embedding router over the uncached embedding floor. Everything is embedded into a
temporary cache (about 12,000 questions, ~4 minutes on 2 idle cores); the user's cache is not touched.
"""

from __future__ import annotations

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
from coe.embed import Encoder
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
Row = tuple[str, int, float, float, str]


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


def measure(encoder: Encoder, routers: dict[str, Router], tests: list[Query]) -> list[Row]:
    """Every router at every size; each uncached measurement embeds questions never seen before."""
    rows: list[Row] = []
    position = 0

    def take(size: int) -> list[Query]:
        nonlocal position
        taken = tests[position : position + max(size, SINGLE_REPEATS)]
        position += len(taken)
        return taken

    largest = max(SIZES)
    for size in SIZES:
        questions = take(size)
        uncached, cached = uncached_then_cached(size, lambda qs: encoder.encode([q.text for q in qs]), questions)
        rows.append(("embedding only (the floor)", size, cached, uncached, "measured"))
        for name, router in routers.items():
            if size == largest or name in OTHER_ROUTERS:
                routed = seconds_for(size, router.route, questions)
                work = max(routed - cached, 0.0) if name in EMBEDDING_ROUTERS else routed
                floor = uncached if name in EMBEDDING_ROUTERS else 0.0
                how = "floor + routing work" if name in EMBEDDING_ROUTERS else "nothing to embed"
                rows.append((name, size, routed, floor + work, how))
            else:
                own = take(size)
                route_uncached, route_cached = uncached_then_cached(size, router.route, own)
                rows.append((name, size, route_cached, route_uncached, "measured"))
    return rows


def main() -> None:
    apply_offline_environment()
    settings = Settings()
    registry = Registry.from_file(POOL, settings.data_dir)
    queries = load_mmlu_pro("test", settings.data_dir)
    profiling, tests = profiling_outcomes(settings, registry, queries)
    with tempfile.TemporaryDirectory() as folder:
        builder = CompositionBuilder(settings.model_copy(update={"cache_dir": Path(folder)}))
        routers = {
            name: builder.router(RouterSpec(name=name), profiling, k=3, seed=0, bench="mmlu-pro")
            for name in (*EMBEDDING_ROUTERS, *OTHER_ROUTERS)
        }
        rows = measure(builder.encoder, routers, tests)
        started = time.perf_counter()
        Encoder(cache_dir=Path(folder)).encode([q.text for q in tests[: max(SIZES)]])
        from_disk = time.perf_counter() - started
    print_table(rows, from_disk)


def print_table(rows: Sequence[Row], from_disk_s: float) -> None:
    print(f"# python -m benchmarks.routing {' '.join(sys.argv[1:])}".rstrip())
    print(f"# machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(
        f"{'router':28s} {'queries':>7s} {'cached s':>9s} {'cached q/s':>11s} {'uncached s':>11s} {'uncached q/s':>12s}"
    )
    for name, size, cached_s, uncached_s, how in rows:
        cached_rate = size / cached_s if cached_s else float("inf")
        uncached_rate = size / uncached_s if uncached_s else float("inf")
        print(
            f"{name:28s} {size:7d} {cached_s:9.4f} {cached_rate:11.0f} {uncached_s:11.3f} {uncached_rate:12.1f}  {how}"
        )
    largest = max(SIZES)
    print(f"# a new process loads {largest} cached embeddings from disk and looks them up in {from_disk_s:.3f} s")
    floor_cached, floor_uncached = next((c, u) for n, s, c, u, _ in rows if s == largest and n.startswith("embedding"))
    work = {n: max(c - floor_cached, 0.0) for n, s, c, _, _ in rows if s == largest and n in EMBEDDING_ROUTERS}
    best = min(work, key=work.__getitem__)
    print(f"# routing work for {largest} queries: " + ", ".join(f"{n} {w:.2f} s" for n, w in work.items()))
    print(f"overhead={work[best] / floor_uncached:.3f}")


if __name__ == "__main__":
    main()
