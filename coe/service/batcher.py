"""Micro-batching: requests that arrive while a batch runs (or within a short window) become the next
batch, so load-once scheduling holds under concurrency and local models never run two generations
at once on the same cores. Batches run one at a time, off the event loop; the queue in front of them
is bounded, and a full queue answers 429 with a Retry-After."""

from __future__ import annotations

import asyncio
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from coe.service.errors import ServiceError

T = TypeVar("T")


@dataclass(eq=False)
class Job(Generic[T]):
    """One request: what to run, and the events (text pieces, then the outcome) it waits for. Lighter
    than an asyncio.Queue per request, which costs more to build than the rest of a job."""

    work: T
    loop: asyncio.AbstractEventLoop
    enqueued_at: float = field(default_factory=time.perf_counter)
    started_at: float | None = None
    abandoned: bool = False
    """The client stopped waiting (timeout, disconnect): a batch not yet started skips it."""
    _events: deque[Any] = field(default_factory=deque)
    _waiter: asyncio.Future[None] | None = None

    def put(self, event: Any) -> None:
        """Hand an event to the waiting request, from the event loop."""
        self._events.append(event)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def emit(self, event: Any) -> None:
        """Hand an event to the waiting request, from any thread."""
        self.loop.call_soon_threadsafe(self.put, event)

    async def next(self) -> Any:
        """The next event, once there is one."""
        while not self._events:
            self._waiter = self.loop.create_future()
            await self._waiter
        return self._events.popleft()


def emit_all(events: list[tuple[Job[Any], Any]]) -> None:
    """Hand each job its event, from any thread: one wake-up of the event loop for them all (a batch's
    outcomes), not one per request."""
    if events:
        events[0][0].loop.call_soon_threadsafe(_put_all, events)


def _put_all(events: list[tuple[Job[Any], Any]]) -> None:
    for job, event in events:
        job.put(event)


class Batcher(Generic[T]):
    """Batches are formed and run on a thread of their own, not on the event loop: the next batch
    starts the moment the last one ends, even while the loop is busy writing that batch's responses
    (formed on the loop, it would wait for them, and the composing side would sit idle)."""

    def __init__(
        self,
        run: Callable[[list[Job[T]]], None],
        *,
        max_queue: int,
        max_batch: int,
        window_s: float = 0.0,
        on_depth: Callable[[int], None] = lambda depth: None,
        on_batch: Callable[[int], None] = lambda size: None,
        on_start: Callable[[], None] = lambda: None,
    ) -> None:
        self._run = run
        self.max_queue = max_queue
        self.max_batch = max_batch
        self.window_s = window_s
        self._on_depth = on_depth
        self._on_batch = on_batch
        self._on_start = on_start
        self._queue: queue.SimpleQueue[Job[T] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._running = 0
        self._batch_s = 0.05
        """A running mean of batch duration, for Retry-After."""

    @property
    def depth(self) -> int:
        """Requests waiting or running."""
        return self._queue.qsize() + self._running

    def start(self) -> None:
        self._thread = threading.Thread(target=self._dispatch, name="coe-batches", daemon=True)
        self._thread.start()

    def submit(self, job: Job[T]) -> None:
        if self._closed or self._thread is None:
            raise ServiceError(503, "the service is shutting down", kind="service_unavailable", code="shutting_down")
        waiting = self._queue.qsize()
        if waiting >= self.max_queue:
            wait = math.ceil(waiting / self.max_batch * self._batch_s) or 1
            raise ServiceError(
                429,
                f"the service is busy ({waiting} requests queued); retry after {wait} s",
                kind="rate_limit_error",
                code="queue_full",
                headers={"Retry-After": str(wait)},
            )
        self._queue.put(job)
        self._on_depth(self.depth)

    async def stop(self) -> None:
        """Take no more requests, finish every queued one."""
        self._closed = True
        if self._thread is not None:
            self._queue.put(None)
            await asyncio.to_thread(self._thread.join)

    def _dispatch(self) -> None:
        self._on_start()
        while True:
            first = self._queue.get()
            if first is None:
                return
            if self.window_s:
                time.sleep(self.window_s)
            jobs, stop = [first], False
            while len(jobs) < self.max_batch:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
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
                    self._run(live)
                except Exception as error:  # a bug in a batch fails its requests, not the dispatcher
                    emit_all([(job, error) for job in live])
                self._batch_s = 0.8 * self._batch_s + 0.2 * (time.perf_counter() - started)
            self._running = 0
            self._on_depth(self.depth)
            if stop:
                return
