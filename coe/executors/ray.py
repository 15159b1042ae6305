"""The Ray executor: each model is one Ray actor that loads it once and keeps it across batches.

A batch's groups (one per model key: a base with its adapters and prompt variants) go each to its
model's actor in one call, the groups of different models run concurrently across the cluster, and
the scheduler puts the outputs back in request order. An actor reserves what its experts' registry
entry asks (`resources:`), else its backend's default (a CPU per llama.cpp thread, a GPU per vLLM
shard, nothing for APIs and recorded answers); a vLLM expert split over several GPUs gets a placement
group of one GPU bundle per shard, which vLLM's own Ray executor fills.

Residency: at most `max_resident` model actors live at once (None: as many as the cluster holds); to
make room, or when an actor cannot be placed while others sit idle, the least recently used idle
actor is ended. Failures: an actor that dies under its group is replaced by a fresh one (on any node
that can take it) and the group is run once more; if that fails too, every request of the group comes back as
a typed `Failure`, and so does a group whose actor no node can start within `start_timeout_s`. No
request is lost and no batch waits forever.

Without an address the executor starts a private Ray instance on loopback and ends it on `close()`;
with one (`auto`, `HOST:PORT`, `ray://HOST:PORT`) it joins that cluster; in a process already
connected to Ray it uses that connection. Every node needs coe installed, and the files the
experts name (weights, adapters, recorded answers) at the same paths.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from coe.backends.base import Backend
from coe.errors import ConfigError
from coe.executors.base import ExecutorKind, GroupJob, GroupKey, GroupResult, failed_group, run_group
from coe.schema import LitellmBackendSpec, VllmBackendSpec
from coe.types import Failure, GenerationParams, ProgressCallback

NAMESPACE = "coe"
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20
"""A private local instance moves prompts and answers only: a small object store is plenty."""
POLL_S = 0.5
PATIENCE_S = 10.0
"""How long a batch whose every group waits for an actor to start lets idle actors keep their place."""


# --------------------------------------------------------------------------- what runs on the cluster


class GroupActor:
    """One model's process on the cluster: holds a copy of its backend and the model it loaded."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._running = threading.Lock()
        self._busy = False

    def run(self, job: GroupJob, params: GenerationParams, naive: bool) -> tuple[GroupResult, float]:
        """The group's result and the seconds this actor spent on it (one group at a time)."""
        with self._running:
            self._busy = True
            started = time.perf_counter()
            try:
                result = run_group(self.backend, job, params, naive=naive)
            finally:
                self._busy = False
            return result, time.perf_counter() - started

    def status(self) -> ActorStatus:
        """Where the actor runs and whether it is running a group now (answered while it is)."""
        import ray

        return ActorStatus(node=ray.get_runtime_context().get_node_id(), pid=os.getpid(), busy=self._busy)


@dataclass(frozen=True, slots=True)
class ActorStatus:
    node: str
    pid: int
    busy: bool


@dataclass(frozen=True, slots=True)
class ActorPlan:
    """How a group's actor is placed: Ray actor options, and for a model over several GPUs the
    placement group bundles (one per shard) and their strategy."""

    options: dict[str, Any]
    bundles: tuple[dict[str, float], ...] = ()
    strategy: str = "PACK"

    @property
    def demand(self) -> dict[str, float]:
        """The resources the actor needs free somewhere before it can start."""
        if self.bundles:
            return {name: sum(b.get(name, 0.0) for b in self.bundles) for name in {n for b in self.bundles for n in b}}
        wanted = {"CPU": self.options["num_cpus"], "GPU": self.options["num_gpus"], **self.options.get("resources", {})}
        if "memory" in self.options:
            wanted["memory"] = self.options["memory"]
        return {name: amount for name, amount in wanted.items() if amount}


def actor_plan(job: GroupJob) -> ActorPlan:
    """The group's actor options from its experts' resources (see `coe.schema.ResourceSpec`)."""
    resources = job.resources
    options: dict[str, Any] = {
        "num_cpus": resources.num_cpus or 0,
        "num_gpus": resources.num_gpus or 0,
        "max_restarts": 0,  # a dead actor is replaced by a fresh one, which runs its group once more
        "max_concurrency": 2,  # `status` is answered while a group runs; groups still run one at a time
    }
    if resources.memory_gib:
        options["memory"] = int(resources.memory_gib * 2**30)
    if resources.custom:
        options["resources"] = dict(resources.custom)
    spec = job.base.backend
    if isinstance(spec, VllmBackendSpec) and spec.n_shards > 1:
        # The actor itself takes no GPU: vLLM's Ray workers take one bundle's GPUs each.
        per_shard = {"GPU": float(resources.num_gpus or spec.n_shards) / spec.n_shards, "CPU": 1.0}
        bundles = tuple(dict(per_shard) for _ in range(spec.n_shards))
        return ActorPlan({**options, "num_gpus": 0, "num_cpus": 1}, bundles, spec.placement_strategy)
    return ActorPlan(options)


def key_variables(job: GroupJob) -> dict[str, str]:
    """The API keys the group's experts name by `api_key_env`, as set in this process: the actor gets
    them in its environment, since a cluster's nodes do not share this process's."""
    names = {
        expert.backend.api_key_env
        for expert, _ in job.requests
        if isinstance(expert.backend, LitellmBackendSpec) and expert.backend.api_key_env
    }
    return {name: os.environ[name] for name in sorted(names) if name in os.environ}


def import_ray() -> Any:
    try:
        import ray
    except ImportError as error:
        raise ConfigError("the ray executor needs Ray: pip install 'coe[ray]'") from error
    return ray


@cache
def _remote_actor_class() -> Any:
    return import_ray().remote(GroupActor)


# --------------------------------------------------------------------------- the driver's side


@dataclass(slots=True)
class _Actor:
    key: GroupKey
    handle: Any
    needs_load: bool
    plan: ActorPlan
    ready: Any
    """The pending `status` call that tells when the process is up and where it runs (None once answered)."""
    created_at: float
    started_at: float | None = None
    node: str = ""
    placement_group: Any = None
    start_charged: bool = False


@dataclass(slots=True)
class _Attempt:
    job: GroupJob
    actor: _Actor
    submitted_at: float
    retry: bool = False


@dataclass(slots=True)
class _Batch:
    params: GenerationParams
    naive: bool
    waiting: list[GroupJob]
    running: dict[Any, _Attempt] = field(default_factory=dict)
    results: list[GroupResult] = field(default_factory=list)
    stalled_since: float | None = None


class RayExecutor:
    """Runs groups on Ray actors, one per model key, resident across batches."""

    kind: ExecutorKind = "ray"

    def __init__(
        self,
        backends: Mapping[str, Backend],
        *,
        address: str | None = None,
        max_resident: int | None = None,
        start_timeout_s: float = 600.0,
    ) -> None:
        self.backends = backends
        self.address = address
        self.max_resident = max_resident
        self.start_timeout_s = start_timeout_s
        self._actors: OrderedDict[GroupKey, _Actor] = OrderedDict()
        self._lock = threading.Lock()
        self._owns_connection = False

    # ----------------------------------------------------------------------- public

    def run(
        self, jobs: Sequence[GroupJob], params: GenerationParams, *, naive: bool, on_progress: ProgressCallback
    ) -> list[GroupResult]:
        if not jobs:
            return []
        with self._lock:
            ray = self._connect()
            batch = _Batch(params, naive, sorted(jobs, key=lambda job: job.key not in self._actors))
            while batch.waiting or batch.running:
                self._dispatch(batch)
                pending_starts = [a.ready for a in self._actors.values() if a.ready is not None]
                ready, _ = ray.wait([*batch.running, *pending_starts], num_returns=1, timeout=POLL_S)
                for ref in ready:
                    if ref in batch.running:
                        self._collect(ray, batch, ref, on_progress)
                    else:
                        self._started(ray, ref)
                if not ready:
                    self._unblock(ray, batch, on_progress)
            return batch.results

    def actors(self) -> dict[GroupKey, Any]:
        """The live actors' handles by model (backend kind, load key); safe to call while a batch runs."""
        return {key: actor.handle for key, actor in dict(self._actors).items()}

    def placement(self) -> dict[GroupKey, str]:
        """The Ray node id each live actor runs on (empty until it started)."""
        return {key: actor.node for key, actor in dict(self._actors).items()}

    def close(self) -> None:
        """End every actor; end the Ray instance this executor started, or leave the cluster it joined."""
        with self._lock:
            if not self._actors and not self._owns_connection:
                return
            ray = import_ray()
            while self._actors:
                self._end(ray, next(iter(self._actors)))
            if self._owns_connection:
                ray.shutdown()
                self._owns_connection = False

    # ----------------------------------------------------------------------- connection and actors

    def _connect(self) -> Any:
        ray = import_ray()
        if ray.is_initialized():
            return ray
        common = {"namespace": NAMESPACE, "log_to_driver": False, "logging_level": logging.WARNING}
        try:
            if self.address is None:
                ray.init(
                    address="local",
                    num_cpus=os.cpu_count() or 1,
                    include_dashboard=False,
                    object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                    _node_ip_address="127.0.0.1",
                    **common,
                )
            else:
                ray.init(address=self.address, **common)
        except (ConnectionError, ValueError, RuntimeError) as error:
            where = f"the Ray cluster at {self.address!r}" if self.address else "a local Ray instance"
            raise ConfigError(
                f"cannot connect to {where}: {error}; start a cluster with `ray start --head`, or leave the "
                "address unset to start a local one"
            ) from error
        self._owns_connection = True
        return ray

    def _start(self, ray: Any, job: GroupJob) -> _Actor:
        plan = actor_plan(job)
        options = dict(plan.options)
        if keys := key_variables(job):
            options["runtime_env"] = {"env_vars": keys}
        placement_group = None
        if plan.bundles:
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            placement_group = ray.util.placement_group(list(plan.bundles), strategy=plan.strategy)
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                placement_group=placement_group, placement_group_capture_child_tasks=True
            )
        handle = _remote_actor_class().options(**options).remote(self.backends[job.kind])
        actor = _Actor(
            key=job.key,
            handle=handle,
            needs_load=self.backends[job.kind].capabilities.needs_load,
            plan=plan,
            ready=handle.status.remote(),
            created_at=time.perf_counter(),
            placement_group=placement_group,
        )
        self._actors[job.key] = actor
        return actor

    def _started(self, ray: Any, ref: Any) -> None:
        actor = next((a for a in self._actors.values() if a.ready == ref), None)
        if actor is None:  # ended meanwhile
            return
        actor.ready = None
        try:
            actor.node = ray.get(ref).node
        except ray.exceptions.RayError:
            return  # died while starting: its group's call fails too and is run again
        actor.started_at = time.perf_counter()

    def _end(self, ray: Any, key: GroupKey) -> None:
        actor = self._actors.pop(key)
        ray.kill(actor.handle, no_restart=True)
        if actor.placement_group is not None:
            ray.util.remove_placement_group(actor.placement_group)

    # ----------------------------------------------------------------------- one batch

    def _dispatch(self, batch: _Batch) -> None:
        """Send each waiting group to its model's actor, starting actors as residency allows."""
        ray = import_ray()
        busy = {attempt.job.key for attempt in batch.running.values()}
        still_waiting = []
        for job in batch.waiting:
            actor = self._actors.get(job.key)
            if actor is None:
                if self.backends[job.kind].capabilities.needs_load and not self._make_room(ray, busy):
                    still_waiting.append(job)
                    continue
                actor = self._start(ray, job)
            self._actors.move_to_end(job.key)
            batch.running[actor.handle.run.remote(job.detached(), batch.params, batch.naive)] = _Attempt(
                job, actor, time.perf_counter()
            )
            busy.add(job.key)
        batch.waiting = still_waiting

    def _make_room(self, ray: Any, busy: set[GroupKey]) -> bool:
        """Whether another model actor may start, ending least recently used idle ones to allow it."""
        if self.max_resident is None:
            return True
        models = [key for key, actor in self._actors.items() if actor.needs_load]
        while len(models) >= self.max_resident:
            idle = [key for key in models if key not in busy]
            if not idle:
                return False
            self._end(ray, idle[0])
            models.remove(idle[0])
        return True

    def _collect(self, ray: Any, batch: _Batch, ref: Any, on_progress: ProgressCallback) -> None:
        attempt = batch.running.pop(ref)
        job, actor = attempt.job, attempt.actor
        try:
            result, busy_s = ray.get(ref)
        except ray.exceptions.RayActorError as error:
            if not attempt.retry:
                self._retry(ray, batch, attempt)
                return
            result = failed_group(job, _actor_died(job, error))
            busy_s = 0.0
        except ray.exceptions.RayError as error:
            result = failed_group(job, Failure(f"Ray could not run model {job.base.load_key}: {error}"))
            busy_s = 0.0
        done_at = time.perf_counter()
        began = max(attempt.submitted_at, actor.started_at or attempt.submitted_at)
        result.transfer_s = max(done_at - began - busy_s, 0.0)
        if not actor.start_charged and actor.started_at is not None:
            result.actor_start_s = actor.started_at - actor.created_at
            actor.start_charged = True
        result.restarts = int(attempt.retry)
        result.node = actor.node
        result.job = job  # with its text sinks, which stay here: they get the whole texts now
        job.deliver(result.outputs)
        batch.results.append(result)
        on_progress(len(job.requests))

    def _retry(self, ray: Any, batch: _Batch, attempt: _Attempt) -> None:
        """Run a group once more after its actor died, on a fresh actor (placed wherever Ray can)."""
        job = attempt.job
        if self._actors.get(job.key) is attempt.actor:
            self._end(ray, job.key)
        actor = self._start(ray, job)
        ref = actor.handle.run.remote(job.detached(), batch.params, batch.naive)
        batch.running[ref] = _Attempt(job, actor, time.perf_counter(), retry=True)

    def _unblock(self, ray: Any, batch: _Batch, on_progress: ProgressCallback) -> None:
        """Nothing finished for a while: if groups wait for actors that cannot start, end idle actors
        to make room; fail the waiting groups once nothing is left to wait for."""
        unstarted = [a for a in batch.running.values() if a.actor.started_at is None]
        if not unstarted:
            batch.stalled_since = None
            return
        busy = {a.job.key for a in batch.running.values()}
        idle = [key for key, actor in self._actors.items() if actor.needs_load and key not in busy]
        if idle and not _fits(unstarted[0].actor.plan.demand, ray.available_resources()):
            self._end(ray, idle[0])
            return
        if len(unstarted) < len(batch.running):  # a started group is running: its end frees resources
            batch.stalled_since = None
            return
        now = time.perf_counter()
        batch.stalled_since = batch.stalled_since or now
        if idle and now - batch.stalled_since >= min(PATIENCE_S, self.start_timeout_s / 2):
            self._end(ray, idle[0])
            batch.stalled_since = now
        elif not idle and now - batch.stalled_since >= self.start_timeout_s:
            for ref, attempt in list(batch.running.items()):
                del batch.running[ref]
                if self._actors.get(attempt.job.key) is attempt.actor:
                    self._end(ray, attempt.job.key)
                batch.results.append(failed_group(attempt.job, _unplaceable(attempt, self.start_timeout_s)))
                on_progress(len(attempt.job.requests))


def _fits(demand: Mapping[str, float], available: Mapping[str, float]) -> bool:
    return all(available.get(name, 0.0) >= amount for name, amount in demand.items())


def _actor_died(job: GroupJob, error: Exception) -> Failure:
    return Failure(
        f"the Ray actor serving model {job.base.load_key} died twice (its group was run again once): "
        f"{type(error).__name__}",
        kind="server",
        retryable=True,
    )


def _unplaceable(attempt: _Attempt, timeout_s: float) -> Failure:
    demand = ", ".join(f"{name} {amount:g}" for name, amount in attempt.actor.plan.demand.items()) or "nothing"
    return Failure(
        f"no node of the Ray cluster started the actor for model {attempt.job.base.load_key} (it needs "
        f"{demand}) within {timeout_s:g} s; lower the expert's `resources` or add nodes",
        kind="unavailable",
    )
