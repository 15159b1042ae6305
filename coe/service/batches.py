"""The composing side of the service: it forms the micro-batches and runs them through the Composer.

Requests arrive as `Asked` messages, one per request, the moment the HTTP side has decided them. When
a batch ends, everything that arrived meanwhile (at most `max_batch`; after `batch_window_s`, when
set) becomes the next batch, and each group of it (one composition, one set of settings) is one
`Composer.run`: routed, scheduled and fused together, so load-once scheduling holds under concurrency
and local models never run two generations at once. The side that composes forms the batch because
it alone knows when it is free: asked by the HTTP side, the next batch waited for that side's thread
to get the interpreter lock back from its busy event loop (a few milliseconds a batch, with the
composing process idle), and the event loop writes its requests out without waiting for anything.

The loop runs where composing runs: in a process of its own, reading a pipe (`serve_process`), or on
a thread of the service's process, reading a queue. What it says back (a batch started, pieces of
streamed answers, each group's answers) goes through `send`, in order.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import queue
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, NamedTuple, Protocol

from coe.compose import CompositionBuilder, CompositionSpec
from coe.embed import single_threaded_search
from coe.errors import CoeError
from coe.schema import Query
from coe.service.compositions import Compositions
from coe.service.config import ServiceConfig
from coe.service.errors import from_coe_error
from coe.service.served import Served, served
from coe.service.wire import Message, SocketInbox, frame
from coe.settings import Settings
from coe.types import BatchStats, Failure, GenerationParams

logger = logging.getLogger(__name__)


class Asked(NamedTuple):
    """One request, decided by the HTTP side. A plain tuple on the wire, the question in parts: its
    `Query` (a pydantic model) costs the HTTP process, the service's busiest, more to build and pickle
    than the rest of the message, so the composing side builds it."""

    ticket: int
    spec_key: str
    free_form: bool
    query_id: str
    text: str
    choices: tuple[str, ...] | None
    sampling: tuple[int, float, int, tuple[str, ...]]
    """`GenerationParams`' fields, in order (a dataclass pickles at twice the cost of a tuple)."""
    experts: frozenset[str] | None
    stream: bool
    avoid: dict[str, Failure]
    """The experts cooling down when it was asked (the latest request's list serves its batch)."""

    @property
    def params(self) -> GenerationParams:
        return GenerationParams(*self.sampling)


class Refusal(NamedTuple):
    """A group the Composer refused (a coe error), as the error response its requests get."""

    status: int
    message: str
    kind: str
    code: str | None


class Inbox(Protocol):
    """Messages to the composing side: `SocketInbox` in a composing process, `QueueInbox` on a thread."""

    def next(self, *, wait: bool) -> Message | None:
        """The next message; None when none is waiting and `wait` is false."""


class QueueInbox:
    """Messages from a queue (the composing side on a thread)."""

    def __init__(self, source: queue.SimpleQueue[Message]) -> None:
        self._source = source

    def next(self, *, wait: bool) -> Message | None:
        try:
            return self._source.get() if wait else self._source.get_nowait()
        except queue.Empty:
            return None


class BatchLoop:
    """Forms batches from the inbox and composes them, until told to close (after which every request
    already asked is still answered)."""

    def __init__(
        self,
        compositions: Compositions,
        inbox: Inbox,
        send: Callable[[Message], None],
        *,
        max_batch: int,
        window_s: float,
    ) -> None:
        self._compositions = compositions
        self._inbox = inbox
        self._send = send
        self._max_batch = max_batch
        self._window_s = window_s
        self._specs: dict[str, CompositionSpec] = {}
        self._waiting: dict[int, Asked] = {}
        """Asked, not yet in a batch, in arrival order (a drop takes one out)."""
        self._closing = False

    def run(self) -> None:
        while True:
            if not self._waiting and not self._closing:
                self._take(self._inbox.next(wait=True))
                if self._window_s:
                    time.sleep(self._window_s)
            while not self._closing and (message := self._inbox.next(wait=False)) is not None:
                self._take(message)
            if self._waiting:
                self._compose_batch()
            elif self._closing:
                close(self._compositions)
                self._send(("closed",))
                return

    def _take(self, message: Message | None) -> None:
        assert message is not None
        kind = message[0]
        if kind == "ask":
            asked: Asked = message[1]
            self._waiting[asked.ticket] = asked
        elif kind == "spec":
            self._specs[message[1]] = message[2]
        elif kind == "drop":  # the client stopped waiting; once its batch started it is answered anyway
            self._waiting.pop(message[1], None)
        else:
            self._closing = True

    def _compose_batch(self) -> None:
        tickets = list(self._waiting)[: self._max_batch]
        batch = [self._waiting.pop(ticket) for ticket in tickets]
        self._send(("started", tickets))
        groups: dict[tuple[Any, ...], list[Asked]] = {}
        for asked in batch:
            groups.setdefault((asked.spec_key, asked.sampling, asked.experts, asked.free_form), []).append(asked)
        avoid = batch[-1].avoid
        for group in groups.values():
            group_tickets = [asked.ticket for asked in group]
            try:
                outcome = compose(self._compositions, self._specs[group[0].spec_key], group, avoid, self._send)
            except Exception as error:  # a bug fails this group (500), not the loop
                logger.exception("composing a batch failed")
                self._send(("failed", group_tickets, "".join(traceback.format_exception(error))))
                continue
            if isinstance(outcome, Refusal):
                self._send(("refused", group_tickets, outcome))
            else:
                self._send(("done", group_tickets, *outcome))


def compose(
    compositions: Compositions,
    spec: CompositionSpec,
    group: list[Asked],
    avoid: dict[str, Failure],
    send: Callable[[Message], None],
) -> tuple[list[Served], BatchStats] | Refusal:
    """One group through the Composer: its answers in order, as the HTTP side uses them
    (`coe.service.served`), and what they cost; or why it has none."""
    first = group[0]
    try:
        _, composer = compositions.answering(spec, free_form=first.free_form)
        streams = {i: _stream_to(send, asked.ticket) for i, asked in enumerate(group) if asked.stream}
        queries = [Query(id=asked.query_id, text=asked.text, choices=asked.choices) for asked in group]
        params = first.params
        result = composer.run(queries, params=params, experts=first.experts, avoid=avoid, stream=streams)
        return [served(answer, params.max_tokens) for answer in result.answers], result.stats
    except CoeError as error:
        refused = from_coe_error(error)
        return Refusal(refused.status, refused.message, refused.kind, refused.code)


def _stream_to(send: Callable[[Message], None], ticket: int) -> Callable[[str, str], None]:
    def on_text(expert: str, text: str) -> None:
        send(("piece", ticket, expert, text))

    return on_text


def prepared(builder: CompositionBuilder, config: ServiceConfig) -> Compositions:
    """The service's compositions with its composition built (router fitted), and as many local
    models allowed resident as the pool has (or `max_resident`)."""
    compositions = Compositions(builder, config.composition, synthesizer=config.synthesizer)
    registry = compositions.registry
    local = {e.load_key for e in registry.experts if builder.scheduler.backend_for(e).capabilities.needs_load}
    builder.scheduler.max_resident = config.max_resident or max(len(local), builder.scheduler.max_resident or 1)
    return compositions


def warm(compositions: Compositions) -> None:
    """Load the service composition's query encoder (else the first batch waits for it)."""
    encoder = compositions.composer(compositions.spec).router.get_params().get("encoder")
    if encoder is not None:
        encoder.load()


def close(compositions: Compositions) -> None:
    """Unload the models, free the backends, write the new questions' embeddings."""
    builder = compositions.builder
    builder.flush()
    builder.scheduler.close()
    for backend in builder.backends.values():
        backend.close()


def freeze_startup_objects() -> None:
    """Tune the garbage collector of a process that only serves (`coe serve`, the composing process;
    not a host app's, nor a test run's), once start-up is done. What start-up built (routers,
    profiles, models' metadata) is frozen out of its sight, so a full collection no longer pauses a
    batch for tens of milliseconds to re-scan objects that live as long as the process; and the
    youngest generation is collected every 20,000 allocations instead of 700 (a request makes
    hundreds, nearly all freed by reference counting). Measured with `benchmarks.service` (new
    questions, composing process already split off): 1,160 → 1,570 requests/s, p99 160 → 51 ms."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def serve_process(pipe: Connection, settings: Settings, config: ServiceConfig) -> None:
    """The composing process: build the service's compositions from its settings, say ready, then
    compose until the service says close (or goes away). Signals go to the service, which finishes
    its requests and then closes this process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    single_threaded_search()
    sock = socket.socket(fileno=os.dup(pipe.fileno()))
    pipe.close()
    sending = threading.Lock()  # pieces may be written from a backend's threads

    def send(message: Message) -> None:
        data = frame(message)
        with sending:
            sock.sendall(data)

    try:
        compositions = prepared(CompositionBuilder(settings), config)
        warm(compositions)
    except Exception as error:  # the service built the same composition already: say why, then stop
        send(("failed_start", repr(error)))
        return
    freeze_startup_objects()
    send(("ready",))
    loop = BatchLoop(compositions, SocketInbox(sock), send, max_batch=config.max_batch, window_s=config.batch_window_s)
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the service went away: so do we
        loop.run()


def serve_thread(
    compositions: Compositions,
    inbox: queue.SimpleQueue[Message],
    send: Callable[[Message], None],
    config: ServiceConfig,
) -> threading.Thread:
    """The composing side as a thread of the service's process (its composition already warm)."""

    def run() -> None:
        single_threaded_search()
        BatchLoop(
            compositions, QueueInbox(inbox), send, max_batch=config.max_batch, window_s=config.batch_window_s
        ).run()

    thread = threading.Thread(target=run, name="coe-batches", daemon=True)
    thread.start()
    return thread
