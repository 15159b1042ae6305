"""A group, the scheduler's unit of work: every request one model load serves, run by one call.

Both executors run a group with `run_group`: the local one in this process, the Ray one inside the
actor that keeps the group's model resident. So a group behaves the same wherever it runs: one load
(or one per request in naive mode), adapters served from their base's load, and a failed load or
request coming back as a typed `Failure` on each request it concerns, never as an exception.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from coe.backends.base import Backend, GroupBackend, StreamingBackend, TextSink
from coe.errors import BackendError
from coe.schema import ExpertSpec, ResourceSpec
from coe.types import Failure, Generation, GenerationParams, LoadReport, ProgressCallback, Prompt

ExecutorKind = Literal["local", "ray"]
GroupKey = tuple[str, str]
"""(backend kind, load key): one model to keep resident."""


@dataclass(frozen=True, slots=True)
class GroupJob:
    """The requests of one batch that one model serves: a base, its adapters and prompt variants."""

    kind: str
    base: ExpertSpec
    """A non-adapter expert on the model when the batch has one: what gets loaded."""
    requests: tuple[tuple[ExpertSpec, Prompt], ...]
    """Expert by expert (each expert's requests together), in input order within an expert."""
    indices: tuple[int, ...]
    """Each request's position in the batch."""
    sinks: tuple[TextSink | None, ...] = field(default=(), compare=False)
    """Each request's text sink (empty when none has one): streamed to where the backend streams, else
    handed the whole text. They stay in this process: a Ray actor gets the job without them."""

    def detached(self) -> GroupJob:
        """The job without its text sinks, to send to another process."""
        return dataclasses.replace(self, sinks=()) if self.sinks else self

    def sink(self, position: int) -> TextSink | None:
        return self.sinks[position] if self.sinks else None

    def deliver(self, outputs: Sequence[Generation], streamed: Sequence[int] = ()) -> None:
        """Hand each successful generation not streamed whole to its request's sink."""
        for position, generation in enumerate(outputs):
            sink = self.sink(position)
            if sink is not None and position not in streamed and generation.ok and generation.text:
                sink(generation.text)

    @property
    def key(self) -> GroupKey:
        return (self.kind, self.base.load_key)

    @property
    def adapters(self) -> list[ExpertSpec]:
        return list({expert.id: expert for expert, _ in self.requests if expert.is_adapter}.values())

    @property
    def resources(self) -> ResourceSpec:
        """What the group's actor reserves: the resources one of its experts declares (the registry
        checks they agree), the backend's defaults for the rest."""
        declared = next((expert.resources for expert, _ in self.requests if expert.resources), None)
        return (declared or ResourceSpec()).merged(self.base.actor_resources)

    def blocks(self) -> list[tuple[ExpertSpec, list[int]]]:
        """Each expert with the positions (in `requests`) of its requests."""
        by_expert: dict[str, tuple[ExpertSpec, list[int]]] = {}
        for position, (expert, _) in enumerate(self.requests):
            by_expert.setdefault(expert.id, (expert, []))[1].append(position)
        return list(by_expert.values())


@dataclass(slots=True)
class GroupResult:
    """What running a group gave: one generation per request (in `job.requests` order) and its cost."""

    job: GroupJob
    outputs: list[Generation]
    loads: list[LoadReport] = field(default_factory=list)
    """The loads made (naive mode: one per request); a load of an already resident model is not made."""
    load_s: float = 0.0
    generate_s: float = 0.0
    loaded: bool = True
    """False when the model could not be loaded (every output then carries that failure)."""
    node: str = ""
    """Where it ran: the Ray node id, empty for the local executor."""
    actor_start_s: float = 0.0
    """Ray: waiting for the group's actor process to start (0 when it was already running)."""
    transfer_s: float = 0.0
    """Ray: the round trip beyond the actor's own work (serialization, scheduling, transfer)."""
    restarts: int = 0
    """Ray: times its actor died under it and the group was run again."""


class Executor(Protocol):
    """Runs groups: in this process (`local`) or on Ray actors, one per model (`ray`)."""

    kind: ExecutorKind
    max_resident: int | None
    """Models kept loaded at once, least recently used evicted first (local: None means 1; ray: model
    actors alive at once, None for as many as the cluster holds)."""

    def run(
        self, jobs: Sequence[GroupJob], params: GenerationParams, *, naive: bool, on_progress: ProgressCallback
    ) -> list[GroupResult]:
        """One result per job (any order); `on_progress(n)` as requests finish."""
        ...

    def close(self) -> None:
        """Free every resident model (and the cluster connection this executor opened)."""
        ...


def run_group(
    backend: Backend,
    job: GroupJob,
    params: GenerationParams,
    *,
    naive: bool = False,
    on_progress: ProgressCallback | None = None,
) -> GroupResult:
    """Load the group's model once (naive: once per request) and generate every request."""
    progress = on_progress or (lambda n: None)
    if naive:
        return _run_naive(backend, job, params, progress)
    try:
        load = backend.load(job.base, job.adapters)
    except BackendError as error:
        progress(len(job.requests))
        return failed_group(job, error.failure())
    started = time.perf_counter()
    outputs: list[Generation | None] = [None] * len(job.requests)
    streamed: list[int] = []
    if backend.capabilities.group_calls and isinstance(backend, GroupBackend):  # base + adapters, one call
        try:
            generations = backend.generate_group(job.requests, params)
        except BackendError as error:
            generations = [Generation(text="", error=error.failure())] * len(job.requests)
        outputs = list(generations)
        progress(len(job.requests))
    else:
        streams = backend.capabilities.streams and isinstance(backend, StreamingBackend)
        for expert, positions in job.blocks():
            live = [p for p in positions if streams and job.sink(p) is not None]
            whole = [p for p in positions if p not in live]
            prompts = [job.requests[p][1] for p in whole]
            for position, generation in zip(whole, generate_isolated(backend, expert, prompts, params), strict=True):
                outputs[position] = generation
            for position in live:
                outputs[position] = _stream(backend, job, position, params)  # type: ignore[arg-type]
            streamed += live
            progress(len(positions))
    generate_s = time.perf_counter() - started
    done = [g if g is not None else _not_run(expert) for g, (expert, _) in zip(outputs, job.requests, strict=True)]
    job.deliver(done, streamed)
    loads = [load] if load.loaded else []
    return GroupResult(job, done, loads=loads, load_s=sum(r.seconds for r in loads), generate_s=generate_s)


def _stream(backend: StreamingBackend, job: GroupJob, position: int, params: GenerationParams) -> Generation:
    expert, prompt = job.requests[position]
    sink = job.sink(position)
    assert sink is not None
    try:
        return backend.stream(expert, prompt, params, sink)
    except BackendError as error:
        return Generation(text="", error=error.failure())


def _run_naive(backend: Backend, job: GroupJob, params: GenerationParams, progress: ProgressCallback) -> GroupResult:
    """Load the model for every request and unload it after, as an unbatched system would."""
    result = GroupResult(job, [])
    for expert, prompt in job.requests:
        backend.unload(expert)
        try:
            load = backend.load(expert)
        except BackendError as error:
            result.outputs.append(Generation(text="", error=error.failure()))
            progress(1)
            continue
        if load.loaded:
            result.loads.append(load)
            result.load_s += load.seconds
        started = time.perf_counter()
        result.outputs.extend(generate_isolated(backend, expert, [prompt], params))
        result.generate_s += time.perf_counter() - started
        backend.unload(expert)
        progress(1)
    job.deliver(result.outputs)
    return result


def generate_isolated(
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


def failed_group(job: GroupJob, failure: Failure) -> GroupResult:
    """Every request of the group failing with one failure (a model that could not be served); the
    scheduler names each request's own expert on a failure that names none."""
    return GroupResult(job, [Generation(text="", error=failure)] * len(job.requests), loaded=False)


def _not_run(expert: ExpertSpec) -> Generation:
    return Generation(text="", error=Failure("not run", expert=expert.id))
