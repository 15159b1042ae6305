"""Long work (fitting routers, live generation) in a worker thread, so the page stays responsive and a
run can be cancelled: the worker stops at its next progress tick after `cancel()`."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, Literal, TypeVar

from coe.types import ProgressCallback

T = TypeVar("T")
Status = Literal["running", "done", "failed", "cancelled"]


class Cancelled(Exception):
    """Raised in the worker at its next progress tick once the job is cancelled."""


class Job(Generic[T]):
    """One piece of work on its own thread, with a phase, a progress count and a cancel switch.

    `phase` has the shape of coe's progress factories (`CompositionBuilder.progress`), so library
    progress (profiling, generation) lands here and every tick is a point where a cancel takes effect.
    """

    def __init__(self, work: Callable[[Job[T]], T]) -> None:
        self._work = work
        self._cancel = threading.Event()
        self._finished = threading.Event()
        self.status: Status = "running"
        self.description = "starting"
        self.done = 0
        self.total = 0
        self.result: T | None = None
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._run, name="coe-ui-job", daemon=True)

    def start(self) -> Job[T]:
        self._thread.start()
        return self

    def cancel(self) -> None:
        """Stop waiting at once; the worker stops at its next tick and its result is dropped."""
        self._cancel.set()
        if self.status == "running":
            self.status = "cancelled"

    def wait(self, timeout: float | None = None) -> bool:
        """True when the worker has stopped (finished, failed or reached a tick after a cancel)."""
        return self._finished.wait(timeout)

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def fraction(self) -> float:
        return min(self.done / self.total, 1.0) if self.total else 0.0

    def check(self) -> None:
        """A cancel point between steps that report no progress of their own."""
        if self._cancel.is_set():
            raise Cancelled

    @contextmanager
    def phase(self, description: str, total: int) -> Iterator[ProgressCallback]:
        """A named step of `total` units; yields `tick(n)`, which raises `Cancelled` after a cancel."""
        self.check()
        self.description, self.done, self.total = description, 0, total

        def tick(n: int) -> None:
            self.done += n
            self.check()

        yield tick

    def _run(self) -> None:
        try:
            result = self._work(self)
        except Cancelled:
            self.status = "cancelled"
        except Exception as error:  # shown on the page; a worker thread must not die silently
            self.error = error
            if self.status == "running":
                self.status = "failed"
        else:
            self.result = result
            if self.status == "running":
                self.status = "done"
        finally:
            self._finished.set()
