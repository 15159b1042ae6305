"""An answer as the service's HTTP side uses it, made where it was composed: the response's `coe`
fields already rendered to JSON, and the few values the HTTP side reads itself (headers, metrics,
cool-down, request log). The HTTP process is the service's busiest (its one event loop bounds the
throughput); this way it neither rebuilds answer models off the wire (20 µs an answer, mostly the
route's structure) nor serializes them again, and the composing process, which has CPU to spare,
renders each answer once.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from pydantic_core import to_json

from coe.schema import Answer
from coe.types import Failure


class Call(NamedTuple):
    """One expert asked for the answer: how long it took, and how it failed if it did."""

    expert: str
    latency_s: float
    failure: Failure | None


class Fallback(NamedTuple):
    """A picked expert replaced at answer time, and why."""

    expert: str
    replacement: str | None
    failure: Failure


class Served(NamedTuple):
    text: str
    """The fused answer: the message's content."""
    rendered: bytes
    """The `coe` object's members drawn from the answer (query_id to cost_usd), JSON without braces."""
    timings: dict[str, float]
    router: str
    aggregator: str
    calls: tuple[Call, ...]
    fallbacks: tuple[Fallback, ...]
    n_prompt_tokens: int
    n_completion_tokens: int
    cost_usd: float
    cut: bool
    """The answering expert stopped at max_tokens (finish reason `length`)."""

    @property
    def answered(self) -> list[str]:
        """The experts that answered, in route order."""
        return [call.expert for call in self.calls if call.failure is None]

    @property
    def failures(self) -> list[Failure]:
        """Every failure behind this answer: experts that failed, and picked experts replaced."""
        return [call.failure for call in self.calls if call.failure] + [f.failure for f in self.fallbacks]

    @property
    def generation_s(self) -> float:
        """The time its experts spent generating and loading models."""
        return self.timings.get("generate_s", 0.0) + self.timings.get("load_s", 0.0)


def served(answer: Answer, max_tokens: int) -> Served:
    """`answer` as the HTTP side uses it; `max_tokens` tells whether its expert was cut off."""
    route = answer.route
    members = {
        "query_id": answer.query_id,
        "router": route.router,
        "aggregator": answer.aggregator,
        "choice": answer.choice,
        "votes": answer.votes,
        "route": {
            "experts": [{"expert": c.expert, "score": c.score} for c in route.experts],
            "reason": route.reason,
            "fallbacks": [{"expert": c.expert, "score": c.score} for c in route.fallbacks],
        },
        "experts": [
            {
                "expert": a.expert,
                "text": a.text,
                "choice": a.choice,
                "latency_s": a.latency_s,
                "n_prompt_tokens": a.n_prompt_tokens,
                "n_completion_tokens": a.n_completion_tokens,
                "error": _failure(a.error),
            }
            for a in answer.expert_answers
        ],
        "fallbacks": [
            {"expert": f.expert, "replacement": f.replacement, **(_failure(f.error) or {})} for f in answer.fallbacks
        ],
        "cost_usd": answer.cost_usd,
    }
    answering = [a for a in answer.expert_answers if a.error is None and a.text == answer.answer]
    return Served(
        text=answer.answer,
        rendered=to_json(members, inf_nan_mode="null")[1:-1],
        timings=answer.timings,
        router=route.router,
        aggregator=answer.aggregator,
        calls=tuple(Call(a.expert, a.latency_s, a.error) for a in answer.expert_answers),
        fallbacks=tuple(Fallback(f.expert, f.replacement, f.error) for f in answer.fallbacks),
        n_prompt_tokens=answer.n_prompt_tokens,
        n_completion_tokens=answer.n_completion_tokens,
        cost_usd=answer.cost_usd,
        cut=bool(answering) and answering[0].n_completion_tokens >= max_tokens,
    )


def coe_object(served: Served, request_id: str, batch_size: int, timings: dict[str, float]) -> bytes:
    """The response's `coe` object: the request's id, the rendered answer, the batch, the timings
    (the answer's and the HTTP side's)."""
    head = b'{"request_id":' + to_json(request_id) + b"," + served.rendered
    all_timings = to_json({**served.timings, **timings}, inf_nan_mode="null")
    tail = b',"batch_size":' + to_json(batch_size) + b',"timings":' + all_timings
    return head + tail + b"}"


def with_coe(body: dict[str, Any], coe: bytes) -> bytes:
    """`body` as JSON with `coe` (JSON already) as its last member."""
    return to_json(body, inf_nan_mode="null")[:-1] + b',"coe":' + coe + b"}"


def _failure(failure: Failure | None) -> dict[str, Any] | None:
    if failure is None:
        return None
    return {"kind": failure.kind, "message": failure.message, "retryable": failure.retryable}
