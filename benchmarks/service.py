"""The service under load: 64 concurrent clients over loopback against `coe serve` on the reference pool
(8 recorded experts, knn router fitted on `random:1400:0`, k = 3, weighted vote), beside the same
questions through `Composer.ask_batch` in-process:

    .venv/bin/python -m benchmarks.service [--requests 2000] [--clients 64]

The questions are MMLU-Pro test questions (multiple choice, with their ids, so the recorded experts
answer them). Each side gets them twice: first new, as a service sees new questions, then again. knn
embeds a question (the composition's encoder, `static`) only when its cross-validation found the
nearest profiled items better than the overall ranking; on this pool it finds them no better, so
neither pass embeds (the report says which), and what both measure is routing, generation (replayed),
fusing, and for the service HTTP and JSON. Both sides start from a copy of one
cache holding the encoder and the profiling items' embeddings, and both first answer the same 256
other questions, untimed (the warm-up: recordings read, every code path run once). The clients are a
small keep-alive HTTP/1.1 client on asyncio (uvloop, as the service) in this process: lighter than any
SDK, so the clients, which a deployed service does not share its cores with, cost the 2 cores little;
the service is a real `coe serve` process.

The table gives throughput, client-side latency percentiles, errors and the micro-batch sizes seen,
then where a request's time goes: wall time by stage, and CPU time per request (the service process,
the clients) beside the in-process CPU time per question, which shared cores do not blur, and the
throughput those CPU times allow on this machine's cores (the clients share them), and on the one core
the HTTP process's event loop can use, the bound that holds the ratio under about 0.8. The last line
compares the first (new questions) pass:
`errors=E rps=R p50_ms=A p99_ms=B inprocess_qps=Q ratio=R/Q`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import uvloop

from coe.compose import CompositionBuilder, CompositionSpec, SplitProfile
from coe.embed import STATIC
from coe.schema import Query
from coe.settings import Settings, apply_offline_environment

POOL = "registry/replay-mmlu-pro-ref8.yaml"
SPLIT = "random:1400:0"
WARM_UP = 256
"""Questions (other test questions than the measured ones) each side answers first, untimed: the
replayed experts' recordings are read and every code path has run once before the clock starts."""


@dataclass
class Pass:
    """One pass of requests: client latencies, errors, the server's own timings per response."""

    name: str
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    server: list[dict[str, float]] = field(default_factory=list)
    server_cpu_s: float = 0.0
    """The service's processes together; of which `http_cpu_s` in the HTTP process."""
    http_cpu_s: float = 0.0
    client_cpu_s: float = 0.0

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def spec() -> CompositionSpec:
    return CompositionSpec(
        pool=POOL, router="knn", profile=SplitProfile(bench="mmlu-pro", split=SPLIT), k=3, aggregator="weighted"
    )


def questions(builder: CompositionBuilder, n: int) -> tuple[list[Query], list[Query]]:
    """The n questions measured, and the warm-up questions after them."""
    split = builder.split(SplitProfile(bench="mmlu-pro", split=SPLIT))
    by_id = {query.id: query for query in builder.benchmark("mmlu-pro")}
    chosen = [by_id[i] for i in split.test_ids[: n + WARM_UP]]
    return chosen[:n], chosen[n:]


@dataclass
class InProcess:
    """Seconds (wall, CPU) for `ask_batch` over new questions, over the same again, and to embed them
    alone; whether the router embeds questions at all."""

    new_s: float
    new_cpu_s: float
    cached_s: float
    embed_s: float
    router_embeds: bool


def in_process(settings: Settings, cache: Path, asked: list[Query], warm_up: list[Query]) -> InProcess:
    builder = CompositionBuilder(settings.model_copy(update={"cache_dir": cache}))
    with builder.compose(spec()) as composer:
        composer.ask_batch(warm_up)
        started, cpu = time.perf_counter(), time.process_time()
        composer.ask_batch(asked)
        new, new_cpu = time.perf_counter() - started, time.process_time() - cpu
        started = time.perf_counter()
        composer.ask_batch(asked)
        cached = time.perf_counter() - started
        embeds = bool(np.isfinite(getattr(composer.router, "prior_strength_", np.inf)))
    uncached = builder.encoder(spec().encoder).load().with_cache(None)  # the same model, no embeddings cached
    started = time.perf_counter()
    uncached.encode([query.text for query in asked])
    return InProcess(new, new_cpu, cached, time.perf_counter() - started, embeds)


def cpu_s(pid: int) -> tuple[float, float]:
    """CPU time (user + system) a process has used so far, and its live children (the composing
    process) together, from /proc (Linux); zeros elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        children = [c for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]
    except OSError:
        return 0.0, 0.0
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own, sum(sum(cpu_s(int(child))) for child in children)


def body(query: Query) -> bytes:
    return json.dumps(
        {
            "model": "coe",
            "messages": [{"role": "user", "content": query.text}],
            "coe": {"query_id": query.id, "choices": list(query.choices or ())},
        }
    ).encode()


async def client(port: int, bodies: asyncio.Queue[bytes], result: Pass) -> None:
    """One keep-alive HTTP/1.1 connection asking until the queue is empty."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while not bodies.empty():
            payload = bodies.get_nowait()
            head = (
                f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n"
            ).encode()
            started = time.perf_counter()
            writer.write(head + payload)
            headers = (await reader.readuntil(b"\r\n\r\n")).lower()
            length = int(headers.partition(b"\r\ncontent-length:")[2].partition(b"\r\n")[0])
            data = await reader.readexactly(length)
            result.latencies.append(time.perf_counter() - started)
            if not headers.startswith(b"http/1.1 200"):
                result.errors += 1
                continue
            coe = json.loads(data)["coe"]
            result.batch_sizes.append(coe["batch_size"])
            result.server.append(coe["timings"])
    finally:
        writer.close()


async def load(port: int, server_pid: int, asked: Sequence[Query], clients: int, name: str) -> Pass:
    bodies: asyncio.Queue[bytes] = asyncio.Queue()
    for query in asked:
        bodies.put_nowait(body(query))
    result = Pass(name)
    started, server_cpu, client_cpu = time.perf_counter(), cpu_s(server_pid), time.process_time()
    await asyncio.gather(*(client(port, bodies, result) for _ in range(clients)))
    result.seconds = time.perf_counter() - started
    http, composing = (after - before for after, before in zip(cpu_s(server_pid), server_cpu, strict=True))
    result.server_cpu_s, result.http_cpu_s = http + composing, http
    result.client_cpu_s = time.process_time() - client_cpu
    return result


def serve(settings: Settings, cache: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "COE_CACHE_DIR": str(cache), "COE_DATABASE_URL": settings.database_url}
    if settings.data_dir:
        env["COE_DATA_DIR"] = str(settings.data_dir)
    command = [sys.executable, "-m", "coe.cli", "serve", "--pool", POOL, "--router", "knn", "--k", "3"]
    command += ["--aggregator", "weighted", "--profile", f"mmlu-pro:{SPLIT}", "--port", str(port), "--no-access-log"]
    server = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while True:
        if server.poll() is not None:
            raise SystemExit(f"coe serve exited: {server.stderr.read().decode() if server.stderr else ''}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return server
        except OSError:
            if time.monotonic() > deadline:
                server.kill()
                raise SystemExit("coe serve did not start within 10 minutes") from None
            time.sleep(0.5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=64)
    args = parser.parse_args()
    apply_offline_environment()
    settings = Settings()
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder) / "profiling"
        distilled = settings.cache_dir / "encoders" / STATIC  # `make setup` distils it: copy, not distil again
        if distilled.is_dir():
            shutil.copytree(distilled, base / "encoders" / STATIC)
        builder = CompositionBuilder(settings.model_copy(update={"cache_dir": base}))
        builder.compose(spec())  # profiles the pool once (stored) and embeds the profiling items into `base`
        asked, warm_up = questions(builder, args.requests)
        for side in ("inprocess", "service"):
            shutil.copytree(base, Path(folder) / side)
        inprocess = in_process(settings, Path(folder) / "inprocess", asked, warm_up)
        port = free_port()
        server = serve(settings, Path(folder) / "service", port)
        try:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as clients:
                clients.run(load(port, server.pid, warm_up, args.clients, "warm-up"))
                passes = [
                    clients.run(load(port, server.pid, asked, args.clients, name))
                    for name in ("new questions", "cached")
                ]
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=120)
    report(args, passes, inprocess)


def report(args: argparse.Namespace, passes: list[Pass], inprocess: InProcess) -> None:
    n = args.requests
    new_s, cached_s, embed_s = inprocess.new_s, inprocess.cached_s, inprocess.embed_s
    print(f"# python -m benchmarks.service {' '.join(sys.argv[1:])}".rstrip())
    print(f"# machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"# {n} MMLU-Pro test questions, {args.clients} concurrent clients, pool {POOL}, knn k=3 weighted")
    print(f"{'pass':16s} {'rps':>7s} {'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>8s} {'errors':>6s}  batch sizes")
    for p in passes:
        sizes = sorted(p.batch_sizes) or [0]
        seen = f"min {sizes[0]}, median {statistics.median(sizes):g}, max {sizes[-1]}"
        print(
            f"{p.name:16s} {p.rps:7.1f} {p.percentile(0.5):8.1f} {p.percentile(0.95):8.1f} "
            f"{p.percentile(0.99):8.1f} {p.errors:6d}  {seen}"
        )
    print(f"{'in-process':16s} {n / new_s:7.1f} (ask_batch, new questions)   {n / cached_s:7.1f} (cached)")
    print("# where a request's time goes (means, ms):")
    for p in passes:
        mean = (
            {key: statistics.mean(t.get(key, 0.0) for t in p.server) * 1000 for key in p.server[0]} if p.server else {}
        )
        client_ms = statistics.mean(p.latencies) * 1000
        server_ms = mean.get("request_s", 0.0)
        batch_route_ms = mean.get("route_s", 0) * statistics.mean(p.batch_sizes or [1])
        print(
            f"#   {p.name}: client {client_ms:.1f} = in the service {server_ms:.1f} "
            f"(queued {mean.get('queue_s', 0):.1f}; its batch's routing {batch_route_ms:.1f}; fusing "
            f"{mean.get('fuse_s', 0):.2f} per request) + HTTP, JSON and the client {client_ms - server_ms:.1f}"
        )
    embedding = "knn embeds each" if inprocess.router_embeds else "knn embeds none: no neighbours beat the ranking"
    print(
        f"#   in-process, per question: {1000 * new_s / n:.2f} ms new, {1000 * cached_s / n:.2f} ms cached "
        f"(embedding a question costs {1000 * embed_s / n:.2f} ms; {embedding})"
    )
    print("# CPU time per request (ms; wall-clock rates above also depend on what else runs on the cores):")
    for p in passes:
        print(
            f"#   {p.name}: service processes {1000 * p.server_cpu_s / n:.2f} (HTTP {1000 * p.http_cpu_s / n:.2f}, "
            f"composing {1000 * (p.server_cpu_s - p.http_cpu_s) / n:.2f}), clients {1000 * p.client_cpu_s / n:.2f}"
        )
    print(f"#   in-process ask_batch, new questions: {1000 * inprocess.new_cpu_s / n:.2f} per question")
    first = passes[0]
    inprocess_qps = n / new_s
    cores = os.cpu_count() or 1
    bound = cores * n / (first.server_cpu_s + first.client_cpu_s)
    print(
        f"# the cores' bound on new questions: {cores} cores / CPU per request (service and clients) = "
        f"{bound:.0f} requests/s with every core busy all the time, a ratio of at most {bound / inprocess_qps:.2f}"
    )
    http_bound = n / first.http_cpu_s if first.http_cpu_s else float("inf")
    print(
        f"# the HTTP process's bound (one event loop, one core): 1 / its CPU per request = {http_bound:.0f} "
        f"requests/s, a ratio of at most {http_bound / inprocess_qps:.2f}; it was busy "
        f"{first.http_cpu_s / first.seconds:.2f} of a core"
    )
    print(
        f"errors={sum(p.errors for p in passes)} rps={first.rps:.1f} p50_ms={first.percentile(0.5):.1f} "
        f"p99_ms={first.percentile(0.99):.1f} inprocess_qps={inprocess_qps:.1f} ratio={first.rps / inprocess_qps:.2f}"
    )


if __name__ == "__main__":
    main()
