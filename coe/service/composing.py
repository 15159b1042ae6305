"""The composing side of the service: where batches are routed, generated and fused.

By default it is a process of its own (`composer="process"`): the HTTP side (parsing, validating,
serializing) and the composing side then run on two cores instead of taking turns on one
interpreter lock, and the models still live in one process, so each is loaded once. With
`composer="thread"` it runs on the service's batch thread (one process to debug, or to embed in
another app). Either way it runs one batch at a time, called from the batch thread.

The process is reached over one pipe, by the batch thread alone (no executor: its feeder and result
threads each wait for the interpreter lock while the event loop holds it, which cost 6–8 ms a batch).
What crosses is small and plain: a `Work` (the group's spec, questions and settings, the experts to
avoid); back come the pieces of streamed answers as they are written, in order, then the answers as
JSON with the batch's stats, or a `Refusal`. JSON, because rebuilding unpickled answers costs the
HTTP side, the busier one, more than parsing them: 50 against 70 µs an answer (8 against 42 to write).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import signal
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from pydantic import TypeAdapter

from coe.compose import CompositionBuilder, CompositionSpec
from coe.embed import single_threaded_search
from coe.errors import CoeError
from coe.schema import Answer, Query
from coe.service.compositions import Compositions
from coe.service.config import ComposerKind, ServiceConfig
from coe.service.errors import ServiceError, from_coe_error
from coe.settings import Settings
from coe.types import BatchStats, Failure, GenerationParams

logger = logging.getLogger(__name__)

_ANSWERS = TypeAdapter(list[Answer])

PieceSink = Callable[[str, str, str], None]
"""Receives (request id, expert, text) as an expert writes a streamed answer."""


@dataclass(frozen=True, slots=True)
class Work:
    """One group of a micro-batch: questions on one composition with one set of settings."""

    spec: CompositionSpec
    free_form: bool
    queries: list[Query]
    params: GenerationParams
    experts: frozenset[str] | None
    avoid: dict[str, Failure]
    streamed: dict[int, str]
    """Position in `queries` → request id, for the requests whose answers are streamed."""


@dataclass(frozen=True, slots=True)
class Composed:
    """A group's answers, in its questions' order, and what its batch cost."""

    answers: list[Answer]
    stats: BatchStats


@dataclass(frozen=True, slots=True)
class Refusal:
    """A group the Composer refused (a coe error), as the error response its requests get."""

    status: int
    message: str
    kind: str
    code: str | None

    def error(self) -> ServiceError:
        return ServiceError(self.status, self.message, kind=self.kind, code=self.code)


def prepared(builder: CompositionBuilder, config: ServiceConfig) -> Compositions:
    """The service's compositions with its composition built (router fitted), and as many local
    models allowed resident as the pool has (or `max_resident`)."""
    compositions = Compositions(builder, config.composition, synthesizer=config.synthesizer)
    registry = compositions.registry
    local = {e.load_key for e in registry.experts if builder.scheduler.backend_for(e).capabilities.needs_load}
    builder.scheduler.max_resident = config.max_resident or max(len(local), builder.scheduler.max_resident or 1)
    return compositions


def compose(compositions: Compositions, work: Work, sink: PieceSink) -> Composed | Refusal:
    """One group through the Composer: routed, scheduled and fused together."""
    try:
        _, composer = compositions.answering(work.spec, free_form=work.free_form)
        streams = {position: _stream_to(sink, request_id) for position, request_id in work.streamed.items()}
        result = composer.run(work.queries, params=work.params, experts=work.experts, avoid=work.avoid, stream=streams)
        return Composed(result.answers, result.stats)
    except CoeError as error:
        refused = from_coe_error(error)
        return Refusal(refused.status, refused.message, refused.kind, refused.code)


def _stream_to(sink: PieceSink, request_id: str) -> Callable[[str, str], None]:
    def on_text(expert: str, text: str) -> None:
        sink(request_id, expert, text)

    return on_text


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


class Composing:
    """The composing side: a process of its own, or the batch thread itself. `run` is called from
    the batch thread only."""

    def __init__(
        self, kind: ComposerKind, compositions: Compositions, config: ServiceConfig, on_piece: PieceSink
    ) -> None:
        self.kind = kind
        self._compositions = compositions
        self._config = config
        self._on_piece = on_piece
        self._process: BaseProcess | None = None
        self._pipe: Connection | None = None

    async def start(self) -> None:
        """Start the composing side and wait until its composition is built and its encoder loaded."""
        if self.kind == "thread":
            await asyncio.to_thread(warm, self._compositions)
        else:
            await asyncio.to_thread(self._spawn)

    def on_batch_thread(self) -> None:
        """Set up the batch thread, where thread-mode batches are composed."""
        if self.kind == "thread":
            single_threaded_search()

    def run(self, work: Work) -> Composed | Refusal:
        """The group's answers (its streamed pieces handed on as they come), or why it has none."""
        if self.kind == "thread":
            return compose(self._compositions, work, self._on_piece)
        try:
            result = self._call("compose", work)
        except (EOFError, OSError):
            # The composing process died (killed, out of memory): its batch fails, a new one starts.
            logger.error("the composing process stopped while answering; starting a new one")
            self._spawn()
            return Refusal(
                503,
                "the composing process stopped while answering (see the service log); it was restarted: retry",
                "service_unavailable",
                "composer_restarted",
            )
        if isinstance(result, Refusal):
            return result
        answers, stats = result
        return Composed(_ANSWERS.validate_json(answers), stats)

    async def stop(self) -> None:
        """Unload the models and stop the composing process (call once no batch runs)."""
        await asyncio.to_thread(self._stop)

    def _stop(self) -> None:
        if self.kind == "thread":
            close(self._compositions)
            return
        with contextlib.suppress(EOFError, OSError):  # else the process is gone, and its models with it
            self._call("close")
        if self._process is not None:
            self._process.join(timeout=60)

    def _spawn(self) -> None:
        if self._process is not None and self._process.is_alive():
            self._process.kill()
        context = multiprocessing.get_context("spawn")
        self._pipe, theirs = context.Pipe()
        settings = self._compositions.builder.settings
        self._process = context.Process(
            target=_serve, args=(theirs, settings, self._config), name="coe-composer", daemon=True
        )
        self._process.start()
        theirs.close()
        self._call("warm")

    def _call(self, kind: str, *args: Any) -> Any:
        """Ask the composing process; relay the pieces it streams meanwhile; its answer."""
        assert self._pipe is not None
        self._pipe.send((kind, *args))
        while True:
            message = self._pipe.recv()
            if message[0] == "piece":
                self._on_piece(*message[1:])
            elif message[0] == "failed":
                raise RuntimeError(f"the composing process failed: {message[1]}")
            else:
                return message[1]


# ----------------------------------------------------------------------- inside the composing process


def _serve(pipe: Connection, settings: Settings, config: ServiceConfig) -> None:
    """The composing process: build the service's compositions from its settings, then answer the
    service's requests until it says close (or goes away). Signals go to the service, which finishes
    its requests and then closes this process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    single_threaded_search()
    sending = threading.Lock()  # pieces may be written from a backend's threads

    def send(message: tuple[Any, ...]) -> None:
        with sending:
            pipe.send(message)

    def piece(request_id: str, expert: str, text: str) -> None:
        send(("piece", request_id, expert, text))

    try:
        compositions = prepared(CompositionBuilder(settings), config)
    except Exception as error:  # the service built the same composition already: say why, then stop
        send(("failed", repr(error)))
        return
    while True:
        try:
            kind, *args = pipe.recv()
        except EOFError:  # the service is gone
            return
        try:
            if kind == "compose":
                result = compose(compositions, args[0], piece)
                answered = (_ANSWERS.dump_json(result.answers), result.stats) if isinstance(result, Composed) else None
                send(("done", answered or result))
            elif kind == "warm":
                warm(compositions)
                freeze_startup_objects()
                send(("done", None))
            else:
                close(compositions)
                send(("done", None))
                return
        except Exception as error:  # a bug fails this batch (500), not the process
            send(("failed", "".join(traceback.format_exception(error))))
