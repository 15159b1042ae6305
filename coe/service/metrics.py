"""Prometheus metrics of one service (its own registry, so several apps can live in one process)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from coe.service.served import Served
from coe.types import BatchStats

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "coe_requests", "Requests answered, by model and HTTP status.", ["model", "status"], registry=r
        )
        self.latency = Histogram(
            "coe_request_seconds",
            "Request latency, arrival to response.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "coe_overhead_seconds", "Request time not spent in experts.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.expert_calls = Counter(
            "coe_expert_calls", "Expert generations, by outcome.", ["expert", "outcome"], registry=r
        )
        self.expert_latency = Histogram(
            "coe_expert_seconds", "Expert generation latency.", ["expert"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.model_loads = Counter("coe_model_loads", "Models loaded by the scheduler.", registry=r)
        self.fallbacks = Counter(
            "coe_fallbacks", "Picked experts replaced at answer time, by why.", ["expert", "kind"], registry=r
        )
        self.errors = Counter("coe_errors", "Error responses and expert failures, by kind.", ["kind"], registry=r)
        self.queue_depth = Gauge("coe_queue_depth", "Requests waiting for a batch.", registry=r)
        self.batch_size = Histogram("coe_batch_size", "Requests per micro-batch.", buckets=BATCH_BUCKETS, registry=r)
        self.cooling = Gauge("coe_experts_cooling", "Experts in cool-down after repeated failures.", registry=r)

        self._children: dict[tuple[MetricWrapperBase, tuple[str, ...]], Any] = {}

    def child(self, metric: MetricWrapperBase, *labels: str) -> Any:
        """`metric.labels(*labels)`, kept: prometheus_client's lookup costs 1.5 µs a call, and a
        request makes about eight."""
        key = (metric, labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def observe_request(self, model: str, status: int, latency_s: float, error_kind: str | None) -> None:
        self.child(self.requests, model, str(status)).inc()
        self.child(self.latency, model).observe(latency_s)
        if error_kind:
            self.child(self.errors, error_kind).inc()

    def observe_batch(self, answers: Sequence[Served], stats: BatchStats) -> None:
        """What one composed batch did: expert calls, failures, replacements, loads."""
        self.model_loads.inc(stats.n_loads)
        for answer in answers:
            for expert, latency_s, failure in answer.calls:
                self.child(self.expert_calls, expert, "ok" if failure is None else "error").inc()
                self.child(self.expert_latency, expert).observe(latency_s)
                if failure is not None:
                    self.child(self.errors, f"expert_{failure.kind}").inc()
            for fallback in answer.fallbacks:
                self.child(self.fallbacks, fallback.expert, fallback.failure.kind).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
