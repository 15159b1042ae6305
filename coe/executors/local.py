"""The local executor: groups run in this process, one model resident at a time by default.

Groups whose backend needs a load run one after another (resident models first, since they cost no
load), keeping at most `max_resident` models loaded (the least recently used goes first); groups
whose backend needs none run concurrently beside them: APIs in threads, recorded answers (look-ups)
on the calling thread.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from coe.backends.base import Backend
from coe.executors.base import ExecutorKind, GroupJob, GroupKey, GroupResult, run_group
from coe.schema import ExpertSpec
from coe.types import GenerationParams, ProgressCallback


class LocalExecutor:
    """Runs groups in-process with LRU residency."""

    kind: ExecutorKind = "local"

    def __init__(self, backends: Mapping[str, Backend], *, max_resident: int = 1, max_remote_groups: int = 4) -> None:
        self.backends = backends
        self.max_resident: int | None = max_resident
        self.max_remote_groups = max_remote_groups
        self._resident: OrderedDict[GroupKey, ExpertSpec] = OrderedDict()

    def run(
        self, jobs: Sequence[GroupJob], params: GenerationParams, *, naive: bool, on_progress: ProgressCallback
    ) -> list[GroupResult]:
        capabilities = {job.kind: self.backends[job.kind].capabilities for job in jobs}
        # Recorded answers are look-ups: they run on this thread, since a thread each costs more than they do.
        recorded = [job for job in jobs if capabilities[job.kind].recorded]
        remote = [job for job in jobs if not capabilities[job.kind].needs_load and not capabilities[job.kind].recorded]
        local = sorted(
            (job for job in jobs if capabilities[job.kind].needs_load),
            key=lambda job: job.key not in self._resident,  # resident models first: they cost no load
        )
        with ThreadPoolExecutor(max_workers=self.max_remote_groups) as pool:
            futures = [
                pool.submit(run_group, self.backends[job.kind], job, params, naive=naive, on_progress=on_progress)
                for job in remote
            ]
            looked_up = [
                run_group(self.backends[job.kind], job, params, naive=naive, on_progress=on_progress)
                for job in recorded
            ]
            results = [self._run_resident(job, params, naive, on_progress) for job in local]
            return looked_up + results + [future.result() for future in futures]

    def _run_resident(
        self, job: GroupJob, params: GenerationParams, naive: bool, on_progress: ProgressCallback
    ) -> GroupResult:
        """Run a group that needs its model loaded, evicting least recently used models to make room."""
        if naive:  # loads and unloads per request: nothing stays resident
            return run_group(self.backends[job.kind], job, params, naive=True, on_progress=on_progress)
        if job.key not in self._resident:
            while len(self._resident) >= (self.max_resident or 1):
                (kind, _), expert = self._resident.popitem(last=False)
                self.backends[kind].unload(expert)
        result = run_group(self.backends[job.kind], job, params, on_progress=on_progress)
        if result.loaded:
            self._resident[job.key] = job.base
            self._resident.move_to_end(job.key)
        return result

    def close(self) -> None:
        while self._resident:
            (kind, _), expert = self._resident.popitem(last=False)
            self.backends[kind].unload(expert)
