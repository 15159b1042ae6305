"""Expert-batched execution: every model a batch needs is loaded once.

Requests are grouped by the model that must be resident to serve them (an adapter's base, a prompt
variant's weights); each group is loaded once and all of its requests (its adapters' too) run in one
go. An executor runs the groups: `local` in this process, at most `max_resident` models loaded (least
recently used goes first), groups of backends that need no load beside the local ones (APIs
concurrently in threads, recorded answers looked up on the calling thread); `ray` on a Ray cluster,
one actor per model that keeps it resident across batches, the groups of different models
concurrently (see `coe.executors.ray`). Output order equals input order; a failed request comes back
as a typed `Failure` naming its expert.

`mode="naive"` loads the model for every request, as an unbatched system would: for comparison only.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from coe.backends.base import Backend, TextSink
from coe.errors import SchedulerError, UnknownNameError
from coe.executors.base import Executor, ExecutorKind, GroupJob
from coe.executors.local import LocalExecutor
from coe.schema import ExpertSpec
from coe.types import BatchStats, Failure, Generation, GenerationParams, ProgressCallback, Prompt

CacheKey = tuple[str, str]
"""(expert id, query id)."""


class GenerationCache(Protocol):
    """Generations already made, by (expert id, query id): asked again, they are not recomputed."""

    def get_many(self, keys: Sequence[CacheKey]) -> dict[CacheKey, Generation]: ...

    def put_many(self, generations: Mapping[CacheKey, Generation]) -> None: ...


class MemoryCache:
    """A GenerationCache in a dict: one evaluation seed, or repeated comparisons in one process."""

    def __init__(self) -> None:
        self._items: dict[CacheKey, Generation] = {}

    def __len__(self) -> int:
        return len(self._items)

    def get_many(self, keys: Sequence[CacheKey]) -> dict[CacheKey, Generation]:
        return {key: self._items[key] for key in keys if key in self._items}

    def put_many(self, generations: Mapping[CacheKey, Generation]) -> None:
        self._items.update(generations)


@dataclass(frozen=True, slots=True)
class Request:
    expert: ExpertSpec
    prompt: Prompt
    on_text: TextSink | None = None
    """Receives the answer's text as it is generated (token by token where the backend streams, else
    whole once it is done); a failed generation delivers nothing more."""


class Scheduler:
    """Runs a batch of requests with as few model loads as the batch allows."""

    def __init__(
        self,
        backends: Mapping[str, Backend],
        *,
        mode: Literal["batched", "naive"] = "batched",
        max_resident: int | None = None,
        max_remote_groups: int = 4,
        cache: GenerationCache | None = None,
        executor: ExecutorKind = "local",
        ray_address: str | None = None,
    ) -> None:
        if mode not in ("batched", "naive"):
            raise UnknownNameError("scheduler mode", mode, ["batched", "naive"])
        if executor not in ("local", "ray"):
            raise UnknownNameError("executor", executor, ["local", "ray"])
        if max_resident is not None and max_resident < 1:
            raise SchedulerError(f"max_resident must be at least 1, got {max_resident}")
        self.backends = backends
        self.mode = mode
        self.cache = cache
        self.executor: Executor
        if executor == "ray":
            from coe.executors.ray import RayExecutor

            self.executor = RayExecutor(backends, address=ray_address, max_resident=max_resident)
        else:
            self.executor = LocalExecutor(backends, max_resident=max_resident or 1, max_remote_groups=max_remote_groups)

    @property
    def max_resident(self) -> int | None:
        """Models kept loaded at once (ray: model actors alive at once; None there: as many as fit)."""
        return self.executor.max_resident

    @max_resident.setter
    def max_resident(self, value: int | None) -> None:
        if value is not None and value < 1:
            raise SchedulerError(f"max_resident must be at least 1, got {value}")
        self.executor.max_resident = value

    def run(
        self,
        requests: Sequence[Request],
        params: GenerationParams,
        on_progress: ProgressCallback | None = None,
    ) -> tuple[list[Generation], BatchStats]:
        """One generation per request, in input order, and what the batch cost. With a cache, cached
        requests are answered from it and only the others run (successful ones are then cached)."""
        if self.cache is None:
            return self._run(requests, params, on_progress)
        keys = [(r.expert.id, r.prompt.query_id) if r.prompt.query_id else None for r in requests]
        cached = self.cache.get_many([key for key in keys if key is not None])
        missing = [i for i, key in enumerate(keys) if key not in cached]
        if on_progress and len(missing) < len(requests):
            on_progress(len(requests) - len(missing))
        outputs, stats = self._run([requests[i] for i in missing], params, on_progress)
        fresh = dict(zip(missing, outputs, strict=True))
        for i in set(range(len(requests))) - set(missing):
            _deliver(requests[i], cached[keys[i]])  # type: ignore[index]
        self.cache.put_many({keys[i]: g for i, g in fresh.items() if keys[i] is not None and g.ok})  # type: ignore[misc]
        return [fresh[i] if i in fresh else cached[keys[i]] for i in range(len(requests))], stats  # type: ignore[index]

    def _run(
        self,
        requests: Sequence[Request],
        params: GenerationParams,
        on_progress: ProgressCallback | None,
    ) -> tuple[list[Generation], BatchStats]:
        started = time.perf_counter()
        results: list[Generation | None] = [None] * len(requests)
        stats = BatchStats(n_requests=len(requests))
        for request in requests:
            self.backend_for(request.expert)  # fail fast on an unknown backend kind
            stats.requests_per_expert[request.expert.id] = stats.requests_per_expert.get(request.expert.id, 0) + 1
        jobs = group_requests(requests) if requests else []
        progress = on_progress or (lambda n: None)
        for result in self.executor.run(jobs, params, naive=self.mode == "naive", on_progress=progress):
            for index, generation in zip(result.job.indices, result.outputs, strict=True):
                results[index] = generation
            stats.add_group(result.loads, result.generate_s, result.actor_start_s, result.transfer_s, result.restarts)
        stats.wall_s = time.perf_counter() - started
        final = [
            _with_expert(result, request.expert.id) if result is not None else _failed("not run", request.expert.id)
            for result, request in zip(results, requests, strict=True)
        ]
        stats.n_prompt_tokens = sum(g.n_prompt_tokens for g in final)
        stats.n_completion_tokens = sum(g.n_completion_tokens for g in final)
        stats.n_errors = sum(not g.ok for g in final)
        return final, stats

    def close(self) -> None:
        """Unload every model this scheduler keeps resident (Ray: end its actors)."""
        self.executor.close()

    def backend_for(self, expert: ExpertSpec) -> Backend:
        """The backend that runs `expert`; an unknown kind names the configured ones."""
        backend = self.backends.get(expert.backend_kind)
        if backend is None:
            raise UnknownNameError(
                f"backend kind (needed by expert {expert.id!r}); configured kinds are",
                expert.backend_kind,
                self.backends,
            )
        return backend


def group_requests(requests: Sequence[Request]) -> list[GroupJob]:
    """One group per model to load, in order of first request; its base is a non-adapter expert on
    that model when the batch has one, and each expert's requests stay together in input order."""
    by_key: dict[tuple[str, str], dict[str, list[int]]] = {}
    bases: dict[tuple[str, str], ExpertSpec] = {}
    for index, request in enumerate(requests):
        expert = request.expert
        key = (expert.backend_kind, expert.load_key)
        base = bases.setdefault(key, expert)
        if base.is_adapter and not expert.is_adapter:
            bases[key] = expert
        by_key.setdefault(key, {}).setdefault(expert.id, []).append(index)
    jobs = []
    for key, by_expert in by_key.items():
        indices = tuple(i for expert_indices in by_expert.values() for i in expert_indices)
        jobs.append(
            GroupJob(
                kind=key[0],
                base=bases[key],
                requests=tuple((requests[i].expert, requests[i].prompt) for i in indices),
                indices=indices,
                sinks=tuple(requests[i].on_text for i in indices) if any(requests[i].on_text for i in indices) else (),
            )
        )
    return jobs


def _deliver(request: Request, generation: Generation) -> None:
    """A generation that was not streamed reaches the request's text sink whole."""
    if request.on_text is not None and generation.ok and generation.text:
        request.on_text(generation.text)


def _failed(message: str, expert: str) -> Generation:
    return Generation(text="", error=Failure(message, expert=expert))


def _with_expert(generation: Generation, expert: str) -> Generation:
    """Every failure names its expert, whichever backend produced it."""
    if generation.error is None or generation.error.expert is not None:
        return generation
    return dataclasses.replace(generation, error=dataclasses.replace(generation.error, expert=expert))
