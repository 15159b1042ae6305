"""The HTTP side of composing: each decided request goes to the composing side at once (which forms the
micro-batches, `coe.service.batches`), and what comes back (a batch started, pieces of streamed
answers, each group's answers) is handed to the requests waiting for it. Everything here runs on the
event loop; a full queue answers 429 with a Retry-After.

The composing side is a process of its own by default (`composer="process"`): the HTTP side (parsing,
validating, serializing) and the composing side then run on two cores instead of taking turns on one
interpreter lock, and the models still live in one process, so each is loaded once. It is reached
over a socket pair the event loop reads and writes without blocking (`coe.service.wire`); answers
come back rendered for the response (`coe.service.served`), so the HTTP side does not rebuild them. A
composing process that dies (killed, out of memory) fails the requests it held with 503
`composer_restarted` and is started again; requests that arrive meanwhile wait for it. With
`composer="thread"` the same batch loop runs on a thread of the service's process (one process to debug,
or to embed in another app).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import multiprocessing
import os
import queue
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Generic, TypeVar

from coe.compose import CompositionSpec
from coe.service.batches import Asked, Refusal, serve_process, serve_thread, warm
from coe.service.compositions import Compositions
from coe.service.config import ServiceConfig
from coe.service.errors import ServiceError
from coe.service.served import Served
from coe.service.wire import Frames, Message, frame
from coe.types import BatchStats

logger = logging.getLogger(__name__)

T = TypeVar("T")

_TICKETS = itertools.count()
STOP_S = 60
"""How long a stopping composing process may take to unload its models."""

Result = tuple[list[Served], BatchStats] | Refusal | RuntimeError
"""What a group of requests gets: its answers and their cost, a refusal, or the failure of a bug."""


@dataclass(eq=False)
class Job(Generic[T]):
    """One request in flight: what it asks, and the events (text pieces, then the outcome) it waits
    for. Lighter than an asyncio.Queue per request, which costs more to build than the rest of a job."""

    work: T
    ticket: int = field(default_factory=lambda: next(_TICKETS))
    enqueued_at: float = field(default_factory=time.perf_counter)
    started_at: float | None = None
    batch_size: int = 0
    _events: deque[Any] = field(default_factory=deque)
    _waiter: asyncio.Future[None] | None = None

    def put(self, event: Any) -> None:
        self._events.append(event)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next(self, deadline: float) -> Any:
        """The next event, once there is one; TimeoutError past `deadline` (a `time.perf_counter()`
        time). A timer on the loop, not `asyncio.timeout`: its task cancellation costs more per
        request than the rest of the wait."""
        while not self._events:
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = loop.call_at(loop.time() + deadline - time.perf_counter(), _expire, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
        return self._events.popleft()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class Composing:
    """The requests in flight on the composing side, and the way there (a process or a thread)."""

    def __init__(
        self,
        compositions: Compositions,
        config: ServiceConfig,
        *,
        on_result: Callable[[list[Job[Any]], Result], None],
        on_piece: Callable[[Job[Any], str, str], None],
        on_batch: Callable[[int], None] = lambda size: None,
        on_depth: Callable[[int], None] = lambda depth: None,
    ) -> None:
        self.config = config
        self._on_result = on_result
        self._on_piece = on_piece
        self._on_batch = on_batch
        self._on_depth = on_depth
        self._jobs: dict[int, Job[Any]] = {}
        self._asked: dict[int, tuple[Asked, CompositionSpec]] = {}
        """What each job in flight asked (sent again if its composing process dies before its batch)."""
        self._running = 0
        """Jobs in flight whose batch started."""
        self._specs_sent: set[str] = set()
        self._batch_s = 0.05
        """A running mean of batch duration, for Retry-After."""
        self._closed = False
        self._drained = asyncio.Event()
        self._side: _ProcessSide | _ThreadSide = (
            _ProcessSide(compositions, config, self._handle, self._lost)
            if config.composer == "process"
            else _ThreadSide(compositions, config, self._handle)
        )

    async def start(self) -> None:
        """Start the composing side; return once its composition is built and its encoder loaded."""
        await self._side.start()

    def submit(self, job: Job[Any], asked: Asked, spec: CompositionSpec) -> None:
        """Send a request to the composing side; 503 once stopping, 429 when the queue is full."""
        if self._closed:
            raise ServiceError(503, "the service is shutting down", kind="service_unavailable", code="shutting_down")
        waiting = len(self._jobs) - self._running
        if waiting >= self.config.max_queue:
            wait = math.ceil(waiting / self.config.max_batch * self._batch_s) or 1
            raise ServiceError(
                429,
                f"the service is busy ({waiting} requests queued); retry after {wait} s",
                kind="rate_limit_error",
                code="queue_full",
                headers={"Retry-After": str(wait)},
            )
        self._jobs[job.ticket] = job
        self._asked[job.ticket] = (asked, spec)
        self._send(asked, spec)
        self._on_depth(len(self._jobs))

    def _send(self, asked: Asked, spec: CompositionSpec) -> None:
        if asked.spec_key not in self._specs_sent:
            self._side.send(("spec", asked.spec_key, spec))
            self._specs_sent.add(asked.spec_key)
        self._side.send(("ask", asked))

    def drop(self, job: Job[Any]) -> None:
        """The client stopped waiting: a request whose batch has not started is not composed."""
        if self._forget(job.ticket) is not None and job.started_at is None:
            self._side.send(("drop", job.ticket))

    async def stop(self) -> None:
        """Take no more requests, answer every one in flight, then unload the models and stop."""
        self._closed = True
        if self._jobs:
            self._drained.clear()
            await self._drained.wait()
        await self._side.stop()

    def _handle(self, message: Message) -> None:
        kind = message[0]
        if kind == "piece":
            job = self._jobs.get(message[1])
            if job is not None:
                self._on_piece(job, message[2], message[3])
        elif kind == "started":
            now, tickets = time.perf_counter(), message[1]
            for ticket in tickets:
                job = self._jobs.get(ticket)
                if job is not None:
                    job.started_at, job.batch_size = now, len(tickets)
                    self._running += 1
            self._on_batch(len(tickets))
        elif kind in ("done", "refused", "failed"):
            jobs = [job for ticket in message[1] if (job := self._forget(ticket)) is not None]
            if jobs and jobs[0].started_at is not None:
                self._batch_s = 0.8 * self._batch_s + 0.2 * (time.perf_counter() - jobs[0].started_at)
            if kind == "done":
                result: Result = (message[2], message[3])
            elif kind == "refused":
                result = message[2]
            else:
                result = RuntimeError(f"composing a batch failed:\n{message[2]}")
            if jobs:
                self._on_result(jobs, result)

    def _forget(self, ticket: int) -> Job[Any] | None:
        job = self._jobs.pop(ticket, None)
        self._asked.pop(ticket, None)
        if job is not None and job.started_at is not None:
            self._running -= 1
        if not self._jobs:
            self._drained.set()
        self._on_depth(len(self._jobs))
        return job

    def _lost(self) -> None:
        """The composing process died: the requests it held fail, and specs are sent again to the next."""
        logger.error("the composing process stopped while answering; starting a new one")
        self._specs_sent.clear()
        held = [job for job in list(self._jobs.values()) if job.started_at is not None]
        for job in held:
            self._forget(job.ticket)
        if held:
            refusal = Refusal(
                503,
                "the composing process stopped while answering (see the service log); it was restarted: retry",
                "service_unavailable",
                "composer_restarted",
            )
            self._on_result(held, refusal)
        for asked, spec in self._asked.values():  # not started: asked again of the next process
            self._send(asked, spec)


class _ThreadSide:
    """The batch loop on a thread of the service's process, fed by a queue."""

    def __init__(self, compositions: Compositions, config: ServiceConfig, on_message: Callable[[Message], None]):
        self._compositions = compositions
        self._config = config
        self._on_message = on_message
        self._inbox: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        await asyncio.to_thread(warm, self._compositions)
        loop = asyncio.get_running_loop()

        def send(message: Message) -> None:
            loop.call_soon_threadsafe(self._on_message, message)

        self._thread = serve_thread(self._compositions, self._inbox, send, self._config)

    def send(self, message: Message) -> None:
        self._inbox.put(message)

    async def stop(self) -> None:
        self.send(("close",))
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)


class _ProcessSide:
    """The batch loop in a process of its own, over a socket pair the event loop reads and writes
    without blocking. Messages sent while the process (re)starts wait for it."""

    def __init__(
        self,
        compositions: Compositions,
        config: ServiceConfig,
        on_message: Callable[[Message], None],
        on_lost: Callable[[], None],
    ) -> None:
        self._settings = compositions.builder.settings
        self._config = config
        self._on_message = on_message
        self._on_lost = on_lost
        self._process: BaseProcess | None = None
        self._transport: asyncio.Transport | None = None
        self._pending: list[bytes] = []
        self._stopping = False
        self._stopped = asyncio.Event()
        self._restarting: asyncio.Task[None] | None = None

    async def start(self) -> None:
        pipe = await asyncio.to_thread(self._spawn)
        sock = socket.socket(fileno=os.dup(pipe.fileno()))
        pipe.close()
        transport, _ = await asyncio.get_running_loop().connect_accepted_socket(
            lambda: _Frames(self._received, self._closed), sock
        )
        self._transport = transport
        for data in self._pending:
            transport.write(data)
        self._pending.clear()

    def send(self, message: Message) -> None:
        data = frame(message)
        if self._transport is None:
            self._pending.append(data)
        else:
            self._transport.write(data)

    async def stop(self) -> None:
        """Ask the process to unload its models and stop; past `STOP_S`, stop it. A process being
        started again is stopped once it is up."""
        self._stopping = True
        if self._restarting is not None:
            await self._restarting
        transport = self._transport  # the socket's close, seen meanwhile, clears the attribute
        if transport is not None:
            self.send(("close",))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), STOP_S)
            transport.close()
        if self._process is not None:
            await asyncio.to_thread(self._process.join, STOP_S)
            if self._process.is_alive():
                logger.error("the composing process did not stop within %d s; killing it", STOP_S)
                self._process.kill()

    def _spawn(self) -> Connection:
        """Start a composing process; its end of the pipe once it says it is ready."""
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        self._process = context.Process(
            target=serve_process, args=(theirs, self._settings, self._config), name="coe-composer", daemon=True
        )
        self._process.start()
        theirs.close()
        try:
            message = ours.recv()
        except EOFError:
            message = ("failed_start", f"it exited with code {self._process.exitcode}")
        if message[0] != "ready":
            ours.close()
            raise RuntimeError(f"the composing process failed: {message[1]}")
        return ours

    def _received(self, message: Message) -> None:
        if message[0] == "closed":
            self._stopped.set()
        self._on_message(message)

    def _closed(self) -> None:
        self._transport = None
        if self._stopping:
            self._stopped.set()
            return
        if self._process is not None:
            self._process.kill()
        self._on_lost()
        self._restarting = asyncio.get_running_loop().create_task(self._restart())

    async def _restart(self) -> None:
        try:
            await self.start()
        except Exception:  # requests waiting for it time out (504); the log says why
            logger.exception("could not start a new composing process")


class _Frames(asyncio.Protocol):
    """Messages from the composing process, read as they arrive."""

    def __init__(self, on_message: Callable[[Message], None], on_closed: Callable[[], None]) -> None:
        self._on_message = on_message
        self._on_closed = on_closed
        self._frames = Frames()

    def data_received(self, data: bytes) -> None:
        self._frames.feed(data)
        while (message := self._frames.take()) is not None:
            self._on_message(message)

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_closed()
