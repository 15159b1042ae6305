"""The SDK object: route a batch, run it expert-batched, fuse each query's answers.

One code path: `ask(q)` is `ask_batch([q])` is `run([q])` is `compare([q], {router}, {aggregator})`.
`compare` routes a batch with several routers, runs the union of their (expert, query) requests once,
expert-batched, and fuses each router's picks with each aggregator: what evaluation and side-by-side
comparison need, with every generation computed once (give the scheduler a cache to reuse them
across calls).

How many of a route's experts a query asks is the composer's `KPolicy`: all of them (`fixed`), the
fewest whose router scores reach a share of the route's (`topp:P`), or a cascade (`cascade`, `auto`)
that asks the first two and asks one more, round after round, only while the votes so far could still
be overturned by the experts not yet asked. Each round is one expert-batched scheduler run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np

from coe.aggregate import Aggregator, MajorityVote
from coe.answers import check_options, is_correct, question_prompt, read_choice
from coe.backends import Backend, default_backends
from coe.errors import ConfigError, UnknownExpertError
from coe.outcomes import Outcomes
from coe.registry import Registry
from coe.routers import AllRouter, Router
from coe.scheduler import Request, Scheduler
from coe.schema import Answer, ExpertAnswer, ExpertSpec, Query, Route
from coe.stacked import Reliability
from coe.types import BatchStats, Generation, GenerationParams

QueryLike = Query | str


@dataclass(frozen=True)
class BatchResult:
    answers: list[Answer]
    routes: list[Route]
    stats: BatchStats
    """The scheduler's record of the batch (shared by every result of one `compare`)."""


@dataclass(frozen=True, slots=True)
class KPolicy:
    """How many of its route's experts (the router's k, best first) each query asks."""

    kind: Literal["fixed", "topp", "cascade"] = "fixed"
    start: int = 2
    """cascade: experts asked in the first round."""
    threshold: float | None = None
    """cascade: also stop once the answers so far state one letter whose measured reliability in the
    query's category reaches this (the composer needs the pool's `Reliability`)."""
    budget: float | None = None
    """cascade from one expert: the threshold is the highest whose cascade, replayed on the profiling
    items, asks at most this many experts per query on average (`calibrate` finds it per router)."""
    mass: float = 1.0
    """topp: the share of the route's summed scores the asked experts must reach."""

    @classmethod
    def parse(cls, text: str) -> KPolicy:
        """`fixed`, `auto` (= `cascade`), `cascade`, `cascade:START`, `cascade:START:THRESHOLD` or `topp:P`."""
        kind, _, value = text.partition(":")
        start_text, _, threshold_text = value.partition(":")
        try:
            if kind in ("fixed", "auto") and not value:
                return cls(kind="fixed") if kind == "fixed" else cls(kind="cascade")
            threshold = float(threshold_text) if threshold_text else None
            if kind == "cascade" and int(start_text or 2) >= 1 and (threshold is None or 0 < threshold <= 1):
                return cls(kind="cascade", start=int(start_text or 2), threshold=threshold)
            if kind == "calls" and float(value) >= 1:
                return cls(kind="cascade", start=1, budget=float(value))
            if kind == "topp" and 0 < float(value) <= 1:
                return cls(kind="topp", mass=float(value))
        except ValueError:
            pass
        raise ConfigError(
            f"k policy {text!r}: expected fixed, auto, cascade, cascade:START (≥ 1), cascade:START:THRESHOLD "
            "(0 < THRESHOLD ≤ 1), calls:BUDGET (≥ 1) or topp:P (0 < P ≤ 1)"
        )

    def __str__(self) -> str:
        if self.budget is not None:
            return f"calls:{self.budget:g}"
        if self.kind == "cascade":
            return f"cascade:{self.start}" + (f":{self.threshold:g}" if self.threshold is not None else "")
        return "fixed" if self.kind == "fixed" else f"topp:{self.mass:g}"

    def first(self, route: Route) -> int:
        """Experts asked in the first round."""
        n = len(route.experts)
        if self.kind == "cascade":
            return min(self.start, n)
        if self.kind == "topp" and n:
            scores = [max(choice.score, 0.0) for choice in route.experts]
            total, reached = sum(scores), 0.0
            for asked, score in enumerate(scores, 1):
                reached += score
                if total <= 0 or reached >= self.mass * total - 1e-12:
                    return asked
        return n

    def settled(
        self,
        answers: Sequence[ExpertAnswer],
        remaining: int,
        category: str | None = None,
        reliability: Reliability | None = None,
    ) -> bool:
        """Whether to stop asking: the `remaining` experts could no longer change the vote (the leading
        stated letter is ahead of every other letter by more than `remaining`; a guessed letter counts
        for none), or, with a threshold, the answers so far are confident enough."""
        if self.kind != "cascade" or remaining <= 0:
            return True
        if self.budget is not None and self.threshold is None:
            raise ConfigError(f"k policy {self}: calibrate it for the router first (`coe.composer.calibrate`)")
        if self.threshold is not None:
            if reliability is None:
                raise ConfigError(f"k policy {self}: a threshold needs the pool's measured reliability (a profile)")
            if reliability.confidence(answers, category) >= self.threshold:
                return True
        counts: dict[str, int] = {}
        for answer in answers:
            if answer.error is None and answer.choice is not None:
                counts[answer.choice] = counts.get(answer.choice, 0) + (0 if answer.guessed else 1)
        ranked = [*sorted(counts.values(), reverse=True), 0, 0]
        return ranked[0] - ranked[1] > remaining


THRESHOLDS = tuple(np.round(np.arange(0.30, 1.0001, 0.01), 2))
"""The thresholds a budget policy chooses among."""


def calibrate(policy: KPolicy, router: Router, outcomes: Outcomes, reliability: Reliability) -> KPolicy:
    """A budget policy made concrete for `router`: the highest threshold whose cascade, replayed on the
    profiling items' recorded letters (`outcomes.letters`) along the router's routes, asks at most
    `policy.budget` experts per query on average (the lowest threshold when none does). Other
    policies come back unchanged."""
    if policy.budget is None or outcomes.letters is None or outcomes.guessed is None:
        return policy
    routes = router.route(outcomes.items)
    column = {expert: j for j, expert in enumerate(outcomes.expert_ids)}
    answers = [
        [
            ExpertAnswer.model_construct(
                expert=e, text="", choice=outcomes.letters[i, column[e]] or None, guessed=outcomes.guessed[i, column[e]]
            )
            for e in route.expert_ids
        ]
        for i, route in enumerate(routes)
    ]

    def calls(threshold: float) -> float:
        concrete = replace(policy, threshold=threshold)
        spent = []
        for item, route, asked in zip(outcomes.items, routes, answers, strict=True):
            n = concrete.first(route)
            while not concrete.settled(asked[:n], len(asked) - n, item.category, reliability):
                n += 1
            spent.append(n)
        return float(np.mean(spent)) if spent else 0.0

    low, high = 0, len(THRESHOLDS) - 1  # calls grow with the threshold: the last one within budget
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if calls(THRESHOLDS[middle]) <= policy.budget else (low, middle - 1)
    return replace(policy, threshold=float(THRESHOLDS[low]))


class Composer:
    """Router + scheduler + aggregator over a pool of experts."""

    def __init__(
        self,
        experts: Registry | Iterable[ExpertSpec],
        *,
        router: Router | None = None,
        aggregator: Aggregator | None = None,
        backends: Mapping[str, Backend] | None = None,
        scheduler: Scheduler | None = None,
        params: GenerationParams | None = None,
        cache_dir: Path | None = None,
        k_policy: KPolicy | None = None,
        reliability: Reliability | None = None,
    ) -> None:
        self.registry = experts if isinstance(experts, Registry) else Registry(experts, source="the given experts")
        self.router = router or AllRouter().fit(Outcomes.from_priors(self.registry.experts))
        self.aggregator = aggregator or MajorityVote()
        self.backends = backends or default_backends(cache_dir=cache_dir or Path.home() / ".cache" / "coe")
        self.scheduler = scheduler or Scheduler(self.backends)
        self.params = params or GenerationParams()
        self.k_policy = k_policy or KPolicy()
        self.reliability = reliability
        """What a cascade with a threshold reads: each expert's measured reliability (`coe.stacked`)."""
        self.calibrated: dict[str, KPolicy] = {}
        """Per router name, its budget policy made concrete (`calibrate`); others use `k_policy`."""

    def ask(self, question: QueryLike, choices: Sequence[str] | None = None) -> Answer:
        """Answer one question (with `choices`, as multiple choice)."""
        if isinstance(question, str):
            question = Query(id="q0", text=question, choices=check_options(choices) if choices is not None else None)
        return self.ask_batch([question])[0]

    def ask_batch(self, queries: Sequence[QueryLike]) -> list[Answer]:
        return self.run(queries).answers

    def run(self, queries: Sequence[QueryLike], on_progress: Callable[[int], None] | None = None) -> BatchResult:
        """Route, schedule, fuse with this composer's router and aggregator."""
        results = self.compare(queries, {"": self.router}, {"": self.aggregator}, on_progress)
        return results["", ""]

    def compare(
        self,
        queries: Sequence[QueryLike],
        routers: Mapping[str, Router],
        aggregators: Mapping[str, Aggregator],
        on_progress: Callable[[int], None] | None = None,
    ) -> dict[tuple[str, str], BatchResult]:
        """Every (router, aggregator) pair on the same batch; each (expert, query) generated once."""
        batch = [q if isinstance(q, Query) else Query(id=f"q{i}", text=q) for i, q in enumerate(queries)]
        n = max(len(batch), 1)
        timed_routes: dict[str, tuple[list[Route], float]] = {}
        for name, router in routers.items():
            started = time.perf_counter()
            timed_routes[name] = (router.route(batch), time.perf_counter() - started)
        policies = {name: self.calibrated.get(router.name, self.k_policy) for name, router in routers.items()}
        asked = {name: [policies[name].first(route) for route in routes] for name, (routes, _) in timed_routes.items()}
        generations: dict[tuple[str, int], Generation] = {}
        stats = BatchStats()
        while True:  # one expert-batched round per cascade step; a fixed policy runs one round
            needed = {
                (expert_id, index): None
                for name, (routes, _) in timed_routes.items()
                for index, route in enumerate(routes)
                for expert_id in route.expert_ids[: asked[name][index]]
                if (expert_id, index) not in generations
            }
            if not needed:
                break
            generated, round_stats = self._generate(batch, list(needed), on_progress)
            generations.update(generated)
            stats.merge(round_stats)
            for name, (routes, _) in timed_routes.items():
                for index, route in enumerate(routes):
                    ids = route.expert_ids[: asked[name][index]]
                    so_far = [_expert_answer(batch[index], e, generations[e, index]) for e in ids]
                    remaining = len(route.experts) - len(ids)
                    if not policies[name].settled(so_far, remaining, batch[index].category, self.reliability):
                        asked[name][index] += 1
        results = {}
        for router_name, (full_routes, route_s) in timed_routes.items():
            routes = [
                route if n == len(route.experts) else route.model_copy(update={"experts": route.experts[:n]})
                for route, n in zip(full_routes, asked[router_name], strict=True)
            ]
            shared = {"route_s": route_s / n, "load_s": stats.load_s / n}
            fused = {}
            for aggregator_name, aggregator in aggregators.items():
                answers = self._answers(batch, routes, generations, aggregator, shared)
                fused[router_name, aggregator_name] = BatchResult(answers=answers, routes=routes, stats=stats)
            results.update(fused)
        return results

    def _generate(
        self,
        batch: Sequence[Query],
        needed: Sequence[tuple[str, int]],
        on_progress: Callable[[int], None] | None,
    ) -> tuple[dict[tuple[str, int], Generation], BatchStats]:
        """Generations for (expert id, query index) pairs, expert-batched by the scheduler."""
        prompts = {i: question_prompt(batch[i]) for i in {i for _, i in needed}}
        requests = [Request(expert=self._expert(e), prompt=prompts[i]) for e, i in needed]
        outputs, stats = self.scheduler.run(requests, self.params, on_progress)
        return dict(zip(needed, outputs, strict=True)), stats

    def _expert(self, expert_id: str) -> ExpertSpec:
        try:
            return self.registry[expert_id]
        except UnknownExpertError as error:
            raise UnknownExpertError(expert_id, self.registry, "the composer's pool (a router chose it)") from error

    def _answers(
        self,
        batch: Sequence[Query],
        routes: Sequence[Route],
        generations: Mapping[tuple[str, int], Generation],
        aggregator: Aggregator,
        shared: dict[str, float],
    ) -> list[Answer]:
        expert_answers = [
            tuple(_expert_answer(query, expert_id, generations[expert_id, index]) for expert_id in route.expert_ids)
            for index, (query, route) in enumerate(zip(batch, routes, strict=True))
        ]
        started = time.perf_counter()
        verdicts = aggregator.fuse_batch(batch, routes, expert_answers)
        fuse_s = (time.perf_counter() - started) / max(len(batch), 1)
        answers = []
        for query, route, answers_of_query, verdict in zip(batch, routes, expert_answers, verdicts, strict=True):
            generate_s = sum(a.latency_s for a in answers_of_query)
            cost_usd = sum(
                (a.n_prompt_tokens + a.n_completion_tokens) * self.registry[a.expert].cost_per_mtok / 1e6
                for a in answers_of_query
            )
            answers.append(
                Answer.model_construct(  # built from validated parts: skip re-validating 10^5 answers
                    query_id=query.id,
                    answer=verdict.text,
                    choice=verdict.choice,
                    experts=tuple(a.expert for a in answers_of_query),
                    expert_answers=answers_of_query,
                    route=route,
                    aggregator=aggregator.name,
                    votes=verdict.votes,
                    n_prompt_tokens=sum(a.n_prompt_tokens for a in answers_of_query),
                    n_completion_tokens=sum(a.n_completion_tokens for a in answers_of_query),
                    cost_usd=cost_usd,
                    timings={
                        **shared,
                        "generate_s": generate_s,
                        "fuse_s": fuse_s,
                        "total_s": sum(shared.values()) + generate_s + fuse_s,
                    },
                    gold=query.gold,
                    correct=is_correct(verdict.choice, query.gold),
                )
            )
        return answers

    def close(self) -> None:
        """Unload every model and free the backends."""
        self.scheduler.close()
        for backend in self.backends.values():
            backend.close()

    def __enter__(self) -> Composer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _expert_answer(query: Query, expert_id: str, generation: Generation) -> ExpertAnswer:
    n_choices = len(query.choices) if query.choices else 0
    reading = read_choice(generation.text, n_choices) if n_choices else None
    return ExpertAnswer.model_construct(
        expert=expert_id,
        text=generation.text,
        choice=reading.letter if reading else None,
        guessed=reading.guessed if reading else False,
        n_prompt_tokens=generation.n_prompt_tokens,
        n_completion_tokens=generation.n_completion_tokens,
        latency_s=generation.latency_s,
        error=generation.error,
    )
