"""The SDK object: route a batch, run it expert-batched, fuse each query's answers.

`ask(q)` is `ask_batch([q])`: one query is a batch of one, on the one code path.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from coe.aggregate import Aggregator, MajorityVote
from coe.answers import extract_choice, format_question, is_correct, strip_reasoning
from coe.backends import Backend, default_backends
from coe.errors import UnknownExpertError
from coe.outcomes import Outcomes
from coe.registry import Registry
from coe.routers import AllRouter, Router
from coe.scheduler import Request, Scheduler
from coe.schema import Answer, ExpertAnswer, ExpertSpec, Query, Route
from coe.types import BatchStats, Generation, GenerationParams, Prompt

QueryLike = Query | str


@dataclass(frozen=True)
class BatchResult:
    answers: list[Answer]
    routes: list[Route]
    stats: BatchStats


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
        k: int | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self.registry = experts if isinstance(experts, Registry) else Registry(experts, source="the given experts")
        self.router = router or AllRouter().fit(Outcomes.from_priors(self.registry.experts))
        self.aggregator = aggregator or MajorityVote()
        self.backends = backends or default_backends(cache_dir=cache_dir or Path.home() / ".cache" / "coe")
        self.scheduler = scheduler or Scheduler(self.backends)
        self.params = params or GenerationParams()
        self.k = k

    def ask(self, question: QueryLike, choices: Sequence[str] | None = None) -> Answer:
        """Answer one question (with `choices`, as multiple choice)."""
        if isinstance(question, str):
            question = Query(id="q0", text=question, choices=tuple(choices) if choices else None)
        return self.ask_batch([question])[0]

    def ask_batch(self, queries: Sequence[QueryLike]) -> list[Answer]:
        return self.run(queries).answers

    def run(self, queries: Sequence[QueryLike], on_progress: Callable[[int], None] | None = None) -> BatchResult:
        """Route, schedule, fuse; `on_progress(n)` is called as expert requests finish."""
        batch = [q if isinstance(q, Query) else Query(id=f"q{i}", text=q) for i, q in enumerate(queries)]
        started = time.perf_counter()
        routes = self.router.route(batch, self.k)
        route_s = time.perf_counter() - started
        requests, owners = self._requests(batch, routes)
        generations, stats = self.scheduler.run(requests, self.params, on_progress)
        per_query: list[list[tuple[ExpertSpec, Generation]]] = [[] for _ in batch]
        for (query_index, expert), generation in zip(owners, generations, strict=True):
            per_query[query_index].append((expert, generation))
        n = max(len(batch), 1)
        shared = {"route_s": route_s / n, "load_s": stats.load_s / n}
        answers = [
            self._answer(query, route, pairs, shared)
            for query, route, pairs in zip(batch, routes, per_query, strict=True)
        ]
        stats.wall_s = time.perf_counter() - started
        return BatchResult(answers=answers, routes=routes, stats=stats)

    def _requests(
        self, batch: Sequence[Query], routes: Sequence[Route]
    ) -> tuple[list[Request], list[tuple[int, ExpertSpec]]]:
        requests, owners = [], []
        for index, (query, route) in enumerate(zip(batch, routes, strict=True)):
            prompt = Prompt(text=format_question(query.text, query.choices, query.category), query_id=query.id)
            for expert_id in route.expert_ids:
                try:
                    expert = self.registry[expert_id]
                except UnknownExpertError as error:
                    raise UnknownExpertError(
                        expert_id, self.registry, f"the composer's pool (router {route.router!r} chose it)"
                    ) from error
                requests.append(Request(expert=expert, prompt=prompt))
                owners.append((index, expert))
        return requests, owners

    def _answer(
        self, query: Query, route: Route, pairs: list[tuple[ExpertSpec, Generation]], shared: dict[str, float]
    ) -> Answer:
        """`shared` holds this query's share of batch-wide costs (routing, model loads)."""
        n_choices = len(query.choices) if query.choices else 0
        expert_answers = tuple(
            ExpertAnswer(
                expert=expert.id,
                text=generation.text,
                choice=extract_choice(strip_reasoning(generation.text), n_choices) if n_choices else None,
                n_prompt_tokens=generation.n_prompt_tokens,
                n_completion_tokens=generation.n_completion_tokens,
                latency_s=generation.latency_s,
                error=generation.error,
            )
            for expert, generation in pairs
        )
        started = time.perf_counter()
        verdict = self.aggregator.fuse(query, route, expert_answers)
        fuse_s = time.perf_counter() - started
        cost_usd = sum((g.n_prompt_tokens + g.n_completion_tokens) * expert.cost_per_mtok / 1e6 for expert, g in pairs)
        generate_s = sum(a.latency_s for a in expert_answers)
        return Answer(
            query_id=query.id,
            answer=verdict.text,
            choice=verdict.choice,
            experts=tuple(a.expert for a in expert_answers),
            expert_answers=expert_answers,
            route=route,
            aggregator=self.aggregator.name,
            votes=verdict.votes,
            n_prompt_tokens=sum(a.n_prompt_tokens for a in expert_answers),
            n_completion_tokens=sum(a.n_completion_tokens for a in expert_answers),
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

    def close(self) -> None:
        """Unload every model and free the backends."""
        self.scheduler.close()
        for backend in self.backends.values():
            backend.close()

    def __enter__(self) -> Composer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
