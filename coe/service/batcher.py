"""Micro-batching: requests that arrive while a batch runs (or within a short window) become the next
batch, so load-once scheduling holds under concurrency and local models never run two generations
at once on the same cores. Batches run one at a time on one worker thread, off the event loop; the
queue in front of it is bounded, and a full queue answers 429 with a Retry-After."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from coe.service.errors import ServiceError

T = TypeVar("T")


@dataclass(eq=False)
class Job(Generic[T]):
    """One request: what to run, and the queue its events (text pieces, then the outcome) go to."""

    work: T
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    enqueued_at: float = field(default_factory=time.perf_counter)
    started_at: float | None = None
    abandoned: bool = False
    """The client stopped waiting (timeout, disconnect): a batch not yet started skips it."""

    def emit(self, event: Any) -> None:
        """Hand an event to the waiting request, from any thread."""
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


def emit_all(events: list[tuple[Job[Any], Any]]) -> None:
    """Hand each job its event, from any thread: one wake-up of the event loop for them all (a batch's
    outcomes), not one per request."""
    if events:
        events[0][0].loop.call_soon_threadsafe(_put_all, events)


def _put_all(events: list[tuple[Job[Any], Any]]) -> None:
    for job, event in events:
        job.events.put_nowait(event)


class Batcher(Generic[T]):
    def __init__(
        self,
        run: Callable[[list[Job[T]]], None],
        *,
        max_queue: int,
        max_batch: int,
        window_s: float = 0.0,
        on_depth: Callable[[int], None] = lambda depth: None,
        on_batch: Callable[[int], None] = lambda size: None,
        on_worker_start: Callable[[], None] | None = None,
    ) -> None:
        self._run = run
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.window_s = window_s
        self._on_depth = on_depth
        self._on_batch = on_batch
        self._queue: asyncio.Queue[Job[T] | None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="coe-batch", initializer=on_worker_start)
        self._closed = False
        self._running = 0
        self._batch_s = 0.05
        """A running mean of batch duration, for Retry-After."""

    @property
    def depth(self) -> int:
        """Requests waiting or running."""
        return (self._queue.qsize() if self._queue else 0) + self._running

    def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.max_queue)
        self._task = asyncio.get_running_loop().create_task(self._dispatch())

    def submit(self, job: Job[T]) -> None:
        if self._closed or self._queue is None:
            raise ServiceError(503, "the service is shutting down", kind="service_unavailable", code="shutting_down")
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            wait = math.ceil(self._queue.qsize() / self.max_batch * self._batch_s) or 1
            raise ServiceError(
                429,
                f"the service is busy ({self._queue.qsize()} requests queued); retry after {wait} s",
                kind="rate_limit_error",
                code="queue_full",
                headers={"Retry-After": str(wait)},
            ) from None
        self._on_depth(self.depth)

    async def stop(self) -> None:
        """Take no more requests, finish every queued one, stop the worker."""
        self._closed = True
        if self._queue is not None and self._task is not None:
            await self._queue.put(None)
            await self._task
        self._worker.shutdown(wait=True)

    async def _dispatch(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            first = await self._queue.get()
            if first is None:
                return
            if self.window_s:
                await asyncio.sleep(self.window_s)
            jobs, stop = [first], False
            while len(jobs) < self.max_batch and not self._queue.empty():
                job = self._queue.get_nowait()
                if job is None:
                    stop = True
                    break
                jobs.append(job)
            live = [job for job in jobs if not job.abandoned]
            self._running = len(live)
            if live:
                self._on_batch(len(live))
                started = time.perf_counter()
                try:
                    await loop.run_in_executor(self._worker, self._run, live)
                except Exception as error:  # a bug in a batch fails its requests, not the dispatcher
                    for job in live:
                        job.emit(error)
                self._batch_s = 0.8 * self._batch_s + 0.2 * (time.perf_counter() - started)
            self._running = 0
            self._on_depth(self.depth)
            if stop:
                return
