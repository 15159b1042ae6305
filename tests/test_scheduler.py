"""Scheduler invariants on real models: loads = distinct bases, order kept, failures isolated."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from coe.backends.litellm import LitellmBackend
from coe.backends.llamacpp import LlamaCppBackend
from coe.errors import SchedulerError, UnknownNameError
from coe.registry import Registry
from coe.scheduler import Request, Scheduler
from coe.schema import EmbeddedBackendSpec, ExpertSpec, LitellmBackendSpec
from coe.types import GenerationParams, Prompt

PARAMS = GenerationParams(max_tokens=6)


@pytest.fixture
def backends(weights_cache: Path) -> Iterator[dict]:
    embedded = LlamaCppBackend(cache_dir=weights_cache)
    yield {"embedded": embedded, "litellm": LitellmBackend()}
    embedded.close()


def interleaved(pool: Registry, n: int) -> list[Request]:
    experts = [pool["smollm2-135m"], pool["gemma3-270m"]]
    return [Request(expert=experts[i % 2], prompt=Prompt(f"Count to {i}.", query_id=str(i))) for i in range(n)]


def test_batched_loads_each_base_once_and_keeps_input_order(backends: dict, embedded_pool: Registry) -> None:
    requests = interleaved(embedded_pool, 6)
    outputs, stats = Scheduler(backends).run(requests, PARAMS)
    assert stats.n_loads == 2 == len({r.expert.load_key for r in requests})
    assert stats.requests_per_expert == {"smollm2-135m": 3, "gemma3-270m": 3}
    alone = {i: backends["embedded"].generate(r.expert, [r.prompt], PARAMS)[0].text for i, r in enumerate(requests)}
    assert [o.text for o in outputs] == [alone[i] for i in range(6)]
    assert stats.n_errors == 0 and stats.n_completion_tokens > 0 and stats.load_s > 0


def test_naive_mode_loads_per_request(backends: dict, embedded_pool: Registry) -> None:
    requests = interleaved(embedded_pool, 4)
    batched, batched_stats = Scheduler(backends).run(requests, PARAMS)
    naive, naive_stats = Scheduler(backends, mode="naive").run(requests, PARAMS)
    assert naive_stats.n_loads == 4
    assert batched_stats.n_loads <= 2
    assert [o.text for o in naive] == [o.text for o in batched]


def test_resident_models_cost_no_second_load(backends: dict, embedded_pool: Registry) -> None:
    scheduler = Scheduler(backends, max_resident=2)
    _, first = scheduler.run(interleaved(embedded_pool, 2), PARAMS)
    _, second = scheduler.run(interleaved(embedded_pool, 2), PARAMS)
    assert (first.n_loads, second.n_loads) == (2, 0)


def test_max_resident_evicts_the_least_recently_used(backends: dict, embedded_pool: Registry) -> None:
    scheduler = Scheduler(backends, max_resident=1)
    scheduler.run(interleaved(embedded_pool, 2), PARAMS)
    loaded = [e for e in ("smollm2-135m", "gemma3-270m") if backends["embedded"].is_loaded(embedded_pool[e])]
    assert len(loaded) == 1
    scheduler.max_resident = 2  # raised on a live scheduler (what the service does): both stay after one load
    _, raised = scheduler.run(interleaved(embedded_pool, 2), PARAMS)
    _, again = scheduler.run(interleaved(embedded_pool, 2), PARAMS)
    assert (raised.n_loads, again.n_loads) == (1, 0)
    with pytest.raises(SchedulerError, match="at least 1"):
        scheduler.max_resident = 0
    scheduler.close()
    assert not any(backends["embedded"].is_loaded(embedded_pool[e]) for e in ("smollm2-135m", "gemma3-270m"))


def test_failures_stay_with_their_requests(backends: dict, embedded_pool: Registry, tmp_path: Path) -> None:
    missing = ExpertSpec(id="missing", base="x", backend=EmbeddedBackendSpec(gguf=tmp_path / "missing.gguf"))
    dead = ExpertSpec(
        id="dead",
        base="y",
        backend=LitellmBackendSpec(model="openai/y", api_base="http://127.0.0.1:9/v1", api_key="x", num_retries=0),
    )
    good = embedded_pool["smollm2-135m"]
    requests = [
        Request(good, Prompt("Hi")),
        Request(missing, Prompt("Hi")),
        Request(dead, Prompt("Hi")),
        Request(good, Prompt("word " * 9000)),
        Request(good, Prompt("Bye")),
    ]
    outputs, stats = Scheduler(backends).run(requests, PARAMS)
    assert [o.ok for o in outputs] == [True, False, False, False, True]
    failures = [o.error for o in outputs[1:4]]
    assert all(f is not None for f in failures)
    missing_file, refused, too_long = failures  # typed: kind, retryable and expert survive to the caller
    assert "missing.gguf does not exist" in missing_file.message
    assert (missing_file.kind, missing_file.retryable, missing_file.expert) == ("unavailable", False, "missing")
    assert "Connection error" in refused.message
    assert (refused.kind, refused.retryable, refused.expert) == ("connection", True, "dead")
    assert "context" in too_long.message
    assert (too_long.kind, too_long.expert) == ("too_long", "smollm2-135m")
    assert stats.n_errors == 3


def test_unknown_backend_kind_or_mode_is_named(backends: dict, embedded_pool: Registry) -> None:
    with pytest.raises(UnknownNameError, match="unknown scheduler mode 'lazy'"):
        Scheduler(backends, mode="lazy")  # type: ignore[arg-type]
    with pytest.raises(UnknownNameError, match="'embedded'"):
        Scheduler({"litellm": LitellmBackend()}).run(interleaved(embedded_pool, 1), PARAMS)
