"""Writes served requests to the request log in the background, a batch per transaction, so no
response waits on the database; what is pending is written when the service stops."""

from __future__ import annotations

import logging
import threading

from coe.store import RequestLog, ServedRequest

logger = logging.getLogger(__name__)


class Recorder:
    def __init__(self, log: RequestLog, *, flush_s: float = 0.5) -> None:
        self.log = log
        self.flush_s = flush_s
        self._pending: list[ServedRequest] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, served: ServedRequest) -> None:
        with self._lock:
            self._pending.append(served)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="coe-request-log", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.flush()

    def flush(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        try:
            self.log.add(batch)
        except Exception:  # a database outage must not stop the service; the log says what was lost
            logger.exception("could not write %d served requests to the request log", len(batch))

    def _loop(self) -> None:
        while not self._stop.wait(self.flush_s):
            self.flush()
