"""Failure injection through the service: the strongest expert fails 0%, 30% or 100% of its calls, and
no request may be lost.

    .venv/bin/python -m benchmarks.faults [--requests 200] [--clients 8]

Two experts behind a real `coe serve` app (uvicorn on a loopback port), both litellm experts of a small
misbehaving OpenAI-compatible server on loopback (`tests/upstream.py`): `flaky`, ranked first, answers HTTP
500 on the given share of calls; `ok` always answers. The best-single router sends every request to
`flaky` (k = 1, no backend retries, no cool-down, so every failure shows). For each rate the table gives
the requests sent, answered (HTTP 200 with the expected answer), lost (anything else), the fallbacks the
responses report, and the upstream's injected failures, which must equal the fallbacks.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from coe.compose import CompositionSpec
from coe.settings import Settings, apply_offline_environment
from tests.service.conftest import running, upstream_pool
from tests.upstream import ANSWER, serve_upstream

RATES = (0.0, 0.3, 1.0)


def ask(url: str, text: str) -> tuple[bool, int]:
    """Whether the request was answered as expected, and how many fallbacks its response reports."""
    payload = {"model": "coe", "messages": [{"role": "user", "content": text}]}
    response = httpx.post(f"{url}/v1/chat/completions", json=payload, timeout=60)
    if response.status_code != 200:
        return False, 0
    body = response.json()
    return body["choices"][0]["message"]["content"] == ANSWER, len(body["coe"]["fallbacks"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    options = parser.parse_args()
    apply_offline_environment()
    os.environ["LOCAL_KEY"] = "sk-local-benchmark"
    print(f"{'failing':>7} {'requests':>8} {'answered':>8} {'lost':>4} {'fallbacks':>9} {'injected':>8}")
    lost_total = 0
    with tempfile.TemporaryDirectory(prefix="coe-faults-") as folder:
        settings = Settings(database_url=f"sqlite:///{folder}/coe.db")
        for rate in RATES:
            with serve_upstream(failure_rate=rate, seed=0) as upstream:
                pool = upstream_pool(Path(folder), upstream, {"flaky": 0.9, "ok": 0.5}, num_retries=0)
                spec = CompositionSpec.model_validate({"pool": pool, "router": "best-single", "profile": "priors"})
                questions = [f"question {rate} {i}" for i in range(options.requests)]
                with running(spec, settings, cooldown_after=0) as url, ThreadPoolExecutor(options.clients) as clients:
                    results = list(clients.map(lambda text: ask(url, text), questions))
            answered = sum(ok for ok, _ in results)
            fallbacks = sum(n for _, n in results)
            lost_total += options.requests - answered
            print(
                f"{rate:7.0%} {options.requests:8} {answered:8} {options.requests - answered:4} "
                f"{fallbacks:9} {upstream.failures['flaky']:8}"
            )
    print(f"{len(RATES) * options.requests} requests with the first expert failing 0/30/100%: {lost_total} lost")


if __name__ == "__main__":
    main()
