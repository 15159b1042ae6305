"""Cool-down: an expert that fails several times in a row is routed around for a while.

Only failures that say something about the expert count (timeouts, refused connections, server
errors, rate limits, missing models); a request the expert cannot answer (no recorded response, too
long, refused as bad) does not. When the cool-down ends the expert is tried again; one more failure
starts a new one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from coe.service.served import Served
from coe.types import Failure

REQUEST_SPECIFIC = frozenset({"no_record", "too_long", "bad_request"})


class Cooldown:
    def __init__(self, *, after: int, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.after = after
        self.seconds = seconds
        self._clock = clock
        self._streak: dict[str, int] = {}
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def record(self, answers: Sequence[Served]) -> None:
        """Count each expert's consecutive failures over a batch's answers; start cool-downs."""
        with self._lock:
            for answer in answers:
                for expert, _, failure in answer.calls:
                    if failure is None:
                        self._streak[expert] = 0
                    elif failure.kind not in REQUEST_SPECIFIC:
                        streak = self._streak.get(expert, 0) + 1
                        self._streak[expert] = streak
                        if self.after and streak >= self.after:
                            self._until[expert] = self._clock() + self.seconds
                            self._streak[expert] = self.after - 1  # one more failure: again

    def avoid(self) -> dict[str, Failure]:
        """The experts cooling down now, with why (what the Composer replaces without calling them)."""
        if not self._until:  # nearly always: no lock taken, no clock read (asked once per request)
            return {}
        now = self._clock()
        with self._lock:
            for expert in [e for e, until in self._until.items() if until <= now]:
                del self._until[expert]
            return {
                expert: Failure(
                    f"expert {expert!r} is cooling down ({until - now:.0f} s left) after {self.after} failures "
                    "in a row",
                    kind="unavailable",
                    retryable=True,
                    expert=expert,
                )
                for expert, until in self._until.items()
            }
