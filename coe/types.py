"""Small frozen values passed between the pipeline's parts (not boundary types: see `coe.schema`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

ProgressCallback = Callable[[int], None]
"""`on_progress(n)`: n more units of work are done (requests generated, items profiled)."""

FailureKind = Literal[
    "unavailable",
    "timeout",
    "connection",
    "rate_limit",
    "server",
    "bad_request",
    "auth",
    "too_long",
    "no_record",
    "bad_output",
    "error",
]
"""Why a generation failed: `unavailable` a missing package, weights file or recorded file; `no_record`
a recorded expert without this item; `too_long` the prompt exceeds the context; the others name the
transport or provider failure; `bad_output` a reply without an answer (no content); `error` anything
else."""


@dataclass(frozen=True, slots=True)
class GenerationParams:
    """Sampling settings for one batch; temperature 0 is greedy and deterministic."""

    max_tokens: int = 384
    temperature: float = 0.0
    seed: int = 0
    stop: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Prompt:
    """What an expert is asked; `query_id` lets a replay backend find the recorded response."""

    text: str
    query_id: str = ""


@dataclass(frozen=True, slots=True)
class Failure:
    """A failed generation, typed so callers can decide: map it to a status, retry it, or replace the
    expert. Never an empty answer."""

    message: str
    kind: FailureKind = "error"
    retryable: bool = False
    expert: str | None = None

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class Generation:
    """One model output; `error` is set instead of raising so one bad request fails alone."""

    text: str
    n_prompt_tokens: int = 0
    n_completion_tokens: int = 0
    latency_s: float = 0.0
    error: Failure | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class LoadReport:
    """What loading a model cost; `loaded` is False when it was already resident."""

    key: str
    seconds: float = 0.0
    n_bytes: int = 0
    loaded: bool = True


@dataclass(slots=True)
class BatchStats:
    """What one scheduled batch cost: loads, switch time, generation time, tokens."""

    n_requests: int = 0
    n_loads: int = 0
    load_s: float = 0.0
    generate_s: float = 0.0
    wall_s: float = 0.0
    n_prompt_tokens: int = 0
    n_completion_tokens: int = 0
    n_errors: int = 0
    requests_per_expert: dict[str, int] = field(default_factory=dict)
    loads: list[LoadReport] = field(default_factory=list)
    n_actor_starts: int = 0
    """Ray: actor processes started for this batch (0 when every model's actor was already running)."""
    actor_start_s: float = 0.0
    """Ray: time groups waited for their actors to start."""
    transfer_s: float = 0.0
    """Ray: round-trip time beyond the actors' own work (serialization, scheduling, transfer)."""
    n_restarts: int = 0
    """Ray: groups run again because their actor died under them."""

    def add_group(
        self, loads: list[LoadReport], generate_s: float, actor_start_s: float, transfer_s: float, restarts: int
    ) -> None:
        """Count one group's loads and times (times add up even where groups ran concurrently)."""
        self.loads.extend(loads)
        self.n_loads += len(loads)
        self.load_s += sum(load.seconds for load in loads)
        self.generate_s += generate_s
        self.n_actor_starts += actor_start_s > 0
        self.actor_start_s += actor_start_s
        self.transfer_s += transfer_s
        self.n_restarts += restarts

    def merge(self, other: BatchStats) -> None:
        self.n_requests += other.n_requests
        self.n_loads += other.n_loads
        self.load_s += other.load_s
        self.generate_s += other.generate_s
        self.wall_s += other.wall_s
        self.n_prompt_tokens += other.n_prompt_tokens
        self.n_completion_tokens += other.n_completion_tokens
        self.n_errors += other.n_errors
        self.n_actor_starts += other.n_actor_starts
        self.actor_start_s += other.actor_start_s
        self.transfer_s += other.transfer_s
        self.n_restarts += other.n_restarts
        for expert, n in other.requests_per_expert.items():
            self.requests_per_expert[expert] = self.requests_per_expert.get(expert, 0) + n
        self.loads.extend(other.loads)
