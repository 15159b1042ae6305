"""Expert-batched execution: every model a batch needs is loaded once.

Requests are grouped by the model that must be resident to serve them (an adapter's base), each
group is loaded once and all of its requests (its adapters' too) run before the next group, and
at most `max_resident` local models stay loaded (least recently used goes first). Groups whose
backend needs no load (APIs, recorded answers) run concurrently beside the local ones. Output order
equals input order; a failed request comes back as a typed `Failure` naming its expert.

`mode="naive"` loads the model for every request, as an unbatched system would: for comparison only.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, Protocol

from coe.backends.base import Backend, GroupBackend, StreamingBackend, TextSink
from coe.errors import BackendError, SchedulerError, UnknownNameError
from coe.schema import ExpertSpec
from coe.types import BatchStats, Failure, Generation, GenerationParams, LoadReport, ProgressCallback, Prompt

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


@dataclass(frozen=True, slots=True)
class _Group:
    kind: str
    base: ExpertSpec
    by_expert: dict[str, list[int]]
    """expert id -> indices of its requests, in input order."""

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.base.load_key)


class Scheduler:
    """Runs a batch of requests with as few model loads as the batch allows."""

    def __init__(
        self,
        backends: Mapping[str, Backend],
        *,
        mode: Literal["batched", "naive"] = "batched",
        max_resident: int = 1,
        max_remote_groups: int = 4,
        cache: GenerationCache | None = None,
    ) -> None:
        if mode not in ("batched", "naive"):
            raise UnknownNameError("scheduler mode", mode, ["batched", "naive"])
        if max_resident < 1:
            raise SchedulerError(f"max_resident must be at least 1, got {max_resident}")
        self.backends = backends
        self.mode = mode
        self.max_resident = max_resident
        self.max_remote_groups = max_remote_groups
        self.cache = cache
        self._resident: OrderedDict[tuple[str, str], ExpertSpec] = OrderedDict()

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
        progress = on_progress or (lambda n: None)
        if self.mode == "naive":
            self._run_naive(requests, params, results, stats, progress)
        else:
            self._run_batched(requests, params, results, stats, progress)
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
        """Unload every model this scheduler keeps resident."""
        while self._resident:
            (kind, _), expert = self._resident.popitem(last=False)
            self.backends[kind].unload(expert)

    # ----------------------------------------------------------------------- batched

    def _run_batched(
        self,
        requests: Sequence[Request],
        params: GenerationParams,
        results: list[Generation | None],
        stats: BatchStats,
        on_progress: ProgressCallback,
    ) -> None:
        groups = self._groups(requests)
        remote = [g for g in groups if not self.backends[g.kind].capabilities.needs_load]
        local = [g for g in groups if self.backends[g.kind].capabilities.needs_load]
        # Resident models first: they cost no load.
        local.sort(key=lambda g: g.key not in self._resident)
        futures: list[tuple[_Group, Future[tuple[dict[int, Generation], float]]]] = []
        with ThreadPoolExecutor(max_workers=self.max_remote_groups) as pool:
            for group in remote:
                futures.append((group, pool.submit(self._generate_group, group, requests, params, on_progress)))
            for group in local:
                load = self._ensure_loaded(group, requests)
                if isinstance(load, Failure):
                    self._fail_group(group, load, results, on_progress)
                    continue
                stats.loads.append(load)
                if load.loaded:
                    stats.n_loads += 1
                    stats.load_s += load.seconds
                outputs, seconds = self._generate_group(group, requests, params, on_progress)
                stats.generate_s += seconds
                for index, generation in outputs.items():
                    results[index] = generation
            for _, future in futures:
                outputs, seconds = future.result()
                stats.generate_s += seconds
                for index, generation in outputs.items():
                    results[index] = generation

    def _groups(self, requests: Sequence[Request]) -> list[_Group]:
        """One group per model to load, in order of first request; its base is a non-adapter
        expert on that model when the batch has one."""
        groups: dict[tuple[str, str], _Group] = {}
        for index, request in enumerate(requests):
            expert = request.expert
            key = (expert.backend_kind, expert.load_key)
            group = groups.setdefault(key, _Group(kind=expert.backend_kind, base=expert, by_expert={}))
            if group.base.is_adapter and not expert.is_adapter:
                group = groups[key] = _Group(kind=group.kind, base=expert, by_expert=group.by_expert)
            group.by_expert.setdefault(expert.id, []).append(index)
        return list(groups.values())

    def _ensure_loaded(self, group: _Group, requests: Sequence[Request]) -> LoadReport | Failure:
        """Load the group's base with its adapters (evicting LRU models); the failure when it fails."""
        key = group.key
        backend = self.backends[group.kind]
        adapters = [
            requests[indices[0]].expert
            for indices in group.by_expert.values()
            if requests[indices[0]].expert.is_adapter
        ]
        if key not in self._resident:
            while len(self._resident) >= self.max_resident:
                (old_kind, _), old_expert = self._resident.popitem(last=False)
                self.backends[old_kind].unload(old_expert)
        try:
            report = backend.load(group.base, adapters)
        except BackendError as error:
            return error.failure()
        self._resident[key] = group.base
        self._resident.move_to_end(key)
        return report

    def _generate_group(
        self,
        group: _Group,
        requests: Sequence[Request],
        params: GenerationParams,
        on_progress: ProgressCallback,
    ) -> tuple[dict[int, Generation], float]:
        backend = self.backends[group.kind]
        outputs: dict[int, Generation] = {}
        started = time.perf_counter()
        if backend.capabilities.group_calls and isinstance(backend, GroupBackend):  # base + adapters, one call
            indices = [i for expert_indices in group.by_expert.values() for i in expert_indices]
            try:
                generations = backend.generate_group(
                    [(requests[i].expert, requests[i].prompt) for i in indices], params
                )
            except BackendError as error:
                generations = [Generation(text="", error=error.failure())] * len(indices)
            outputs = dict(zip(indices, generations, strict=True))
            for index in indices:
                _deliver(requests[index], outputs[index])
            on_progress(len(indices))
            return outputs, time.perf_counter() - started
        streams = backend.capabilities.streams and isinstance(backend, StreamingBackend)
        for indices in group.by_expert.values():
            expert = requests[indices[0]].expert
            streamed = [i for i in indices if requests[i].on_text is not None and streams]
            batched = [i for i in indices if i not in streamed]
            prompts = [requests[i].prompt for i in batched]
            for index, generation in zip(batched, _generate_isolated(backend, expert, prompts, params), strict=True):
                outputs[index] = generation
                _deliver(requests[index], generation)
            for index in streamed:
                outputs[index] = _stream(backend, requests[index], params)  # type: ignore[arg-type]
            on_progress(len(indices))
        return outputs, time.perf_counter() - started

    @staticmethod
    def _fail_group(
        group: _Group, failure: Failure, results: list[Generation | None], on_progress: ProgressCallback
    ) -> None:
        for indices in group.by_expert.values():
            for index in indices:
                results[index] = Generation(text="", error=failure)
            on_progress(len(indices))

    # ----------------------------------------------------------------------- naive

    def _run_naive(
        self,
        requests: Sequence[Request],
        params: GenerationParams,
        results: list[Generation | None],
        stats: BatchStats,
        on_progress: ProgressCallback,
    ) -> None:
        for index, request in enumerate(requests):
            expert = request.expert
            backend = self.backends[expert.backend_kind]
            backend.unload(expert)
            try:
                load = backend.load(expert)
            except BackendError as error:
                results[index] = Generation(text="", error=error.failure())
                on_progress(1)
                continue
            stats.loads.append(load)
            if load.loaded:
                stats.n_loads += 1
                stats.load_s += load.seconds
            started = time.perf_counter()
            results[index] = generation = _generate_isolated(backend, expert, [request.prompt], params)[0]
            _deliver(request, generation)
            stats.generate_s += time.perf_counter() - started
            backend.unload(expert)
            on_progress(1)

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


def _generate_isolated(
    backend: Backend, expert: ExpertSpec, prompts: list[Prompt], params: GenerationParams
) -> list[Generation]:
    """Generate a list; if the call raises, retry prompt by prompt so one bad request fails alone."""
    try:
        return backend.generate(expert, prompts, params)
    except BackendError as error:
        if len(prompts) == 1:
            return [Generation(text="", error=error.failure())]
    outputs = []
    for prompt in prompts:
        try:
            outputs.extend(backend.generate(expert, [prompt], params))
        except BackendError as error:
            outputs.append(Generation(text="", error=error.failure()))
    return outputs


def _stream(backend: StreamingBackend, request: Request, params: GenerationParams) -> Generation:
    assert request.on_text is not None
    try:
        return backend.stream(request.expert, request.prompt, params, request.on_text)
    except BackendError as error:
        return Generation(text="", error=error.failure())


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
