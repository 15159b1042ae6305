"""The SDK object: route a batch, run it expert-batched, fuse each query's answers.

One code path: `ask(q)` is `ask_batch([q])` is `run([q])` is `compare([q], {router}, {aggregator})`.
`compare` routes a batch with several routers, runs the union of their (expert, query) requests once,
expert-batched, and fuses each router's picks with each aggregator: what evaluation and side-by-side
comparison need, with every generation computed once (give the scheduler a cache to reuse them
across calls).

How many of a route's experts a query asks is the composer's k policy (`coe.policy.KPolicy`): a
cascade asks them round by round, each round one expert-batched scheduler run, while the answers so far
are not enough.

Failures are handled here, once, for every face: a picked expert whose generation fails is replaced by
the next expert its route ranks (`Route.fallbacks`), and each replacement is recorded on the Answer
(`Answer.fallbacks`). The Composer never calls the same expert again for the same query: retrying is
the backend's job (litellm's `num_retries`, with capped backoff), so retries never multiply.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from coe.aggregate import Aggregator, MajorityVote
from coe.answers import check_options, is_correct, question_prompt, read_choice
from coe.backends import Backend, default_backends
from coe.costs import query_cost_bounds, usd, within_cost
from coe.errors import UnknownExpertError
from coe.outcomes import Outcomes
from coe.policy import KPolicy
from coe.recovery import ExpertSink, Lineup, Recovery, StreamSinks, restricted
from coe.registry import Registry
from coe.routers import AllRouter, Router
from coe.scheduler import Request, Scheduler
from coe.schema import Answer, ExpertAnswer, ExpertSpec, Query, Route
from coe.stacked import Reliability
from coe.types import BatchStats, Failure, Generation, GenerationParams

QueryLike = Query | str


@dataclass(frozen=True)
class BatchResult:
    answers: list[Answer]
    routes: list[Route]
    stats: BatchStats
    """The scheduler's record of the batch (shared by every result of one `compare`)."""


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
        recovery: Recovery | None = None,
        cache_dir: Path | None = None,
        k_policy: KPolicy | None = None,
        reliability: Reliability | None = None,
        max_cost_usd: float | None = None,
    ) -> None:
        self.registry = experts if isinstance(experts, Registry) else Registry(experts, source="the given experts")
        self.router = router or AllRouter().fit(Outcomes.from_priors(self.registry.experts))
        self.aggregator = aggregator or MajorityVote()
        self.backends = backends or default_backends(cache_dir=cache_dir or Path.home() / ".cache" / "coe")
        self.scheduler = scheduler or Scheduler(self.backends)
        self.params = params or GenerationParams()
        self.recovery = recovery or Recovery()
        self.k_policy = k_policy or KPolicy()
        self.reliability = reliability
        """What a cascade with a threshold reads: each expert's measured reliability (`coe.stacked`)."""
        self.calibrated: dict[str, KPolicy] = {}
        """Per router name, its budget policy made concrete (`coe.policy.calibrate`); others use `k_policy`."""
        self.max_cost_usd = max_cost_usd
        """The most a query may cost, estimated before it is asked (`coe.costs.within_cost`); None: no cap."""

    def ask(self, question: QueryLike, choices: Sequence[str] | None = None) -> Answer:
        """Answer one question (with `choices`, as multiple choice)."""
        if isinstance(question, str):
            question = Query(id="q0", text=question, choices=check_options(choices) if choices is not None else None)
        return self.ask_batch([question])[0]

    def ask_batch(self, queries: Sequence[QueryLike]) -> list[Answer]:
        return self.run(queries).answers

    def run(
        self,
        queries: Sequence[QueryLike],
        on_progress: Callable[[int], None] | None = None,
        *,
        params: GenerationParams | None = None,
        experts: Collection[str] | None = None,
        avoid: Mapping[str, Failure] | None = None,
        stream: Mapping[int, ExpertSink] | None = None,
    ) -> BatchResult:
        """Route, schedule, fuse with this composer's router and aggregator (options as in `compare`)."""
        results = self.compare(
            queries,
            {"": self.router},
            {"": self.aggregator},
            on_progress,
            params=params,
            experts=experts,
            avoid=avoid,
            stream=stream,
        )
        return results["", ""]

    def compare(
        self,
        queries: Sequence[QueryLike],
        routers: Mapping[str, Router],
        aggregators: Mapping[str, Aggregator],
        on_progress: Callable[[int], None] | None = None,
        *,
        params: GenerationParams | None = None,
        experts: Collection[str] | None = None,
        avoid: Mapping[str, Failure] | None = None,
        stream: Mapping[int, ExpertSink] | None = None,
    ) -> dict[tuple[str, str], BatchResult]:
        """Every (router, aggregator) pair on the same batch; each (expert, query) generated once.

        `params` replace the composer's generation settings for this batch; `experts` restricts the
        routes to these experts (each route keeps its size, taking the best-ranked allowed ones);
        `avoid` names experts not to call (e.g. cooling down after failures), replaced like failed
        ones; `stream` maps a query's position to a sink that receives its answer's text as it is
        written, when its route picks one expert."""
        batch = [q if isinstance(q, Query) else Query(id=f"q{i}", text=q) for i, q in enumerate(queries)]
        n = max(len(batch), 1)
        params = params or self.params
        bounds = self._cost_bounds(batch, params)
        timed_routes: dict[str, tuple[list[Route], float]] = {}
        for name, router in routers.items():
            started = time.perf_counter()
            routes = router.route(batch)
            if experts is not None:
                routes = [restricted(route, set(experts)) for route in routes]
            timed_routes[name] = (self._within_cost(routes, bounds), time.perf_counter() - started)
        policies = {name: self.calibrated.get(router.name, self.k_policy) for name, router in routers.items()}
        lineups = {
            name: [Lineup(route, avoid or {}, self.recovery.replace, policies[name].first(route)) for route in routes]
            for name, (routes, _) in timed_routes.items()
        }
        sinks = StreamSinks(stream or {}, lineups)
        growing = {name: policies[name] for name in lineups if policies[name].kind == "cascade" and not stream}
        generations, stats = self._settle(batch, lineups, params, sinks, on_progress, growing)
        results = {}
        for router_name, (routes, route_s) in timed_routes.items():
            shared = {"route_s": route_s / n, "load_s": stats.load_s / n}
            for aggregator_name, aggregator in aggregators.items():
                answers = self._answers(batch, routes, lineups[router_name], generations, aggregator, shared)
                results[router_name, aggregator_name] = BatchResult(answers=answers, routes=routes, stats=stats)
        return results

    def capped(self, batch: Sequence[Query], routes: Sequence[Route], params: GenerationParams) -> list[Route]:
        """The routes as they are asked under the per-query cost cap (`within_cost`; unchanged without one)."""
        return self._within_cost(routes, self._cost_bounds(batch, params))

    def _cost_bounds(self, batch: Sequence[Query], params: GenerationParams) -> list[dict[str, float]]:
        """Per query, what each expert's call may cost (none computed without a cap)."""
        if self.max_cost_usd is None:
            return []
        return [query_cost_bounds(self.registry.experts, query, params.max_tokens) for query in batch]

    def _within_cost(self, routes: Sequence[Route], bounds: Sequence[dict[str, float]]) -> list[Route]:
        if self.max_cost_usd is None:
            return list(routes)
        cap = self.max_cost_usd
        return [within_cost(route, costs, cap) for route, costs in zip(routes, bounds, strict=True)]

    def _settle(
        self,
        batch: Sequence[Query],
        lineups: Mapping[str, Sequence[Lineup]],
        params: GenerationParams,
        sinks: StreamSinks,
        on_progress: Callable[[int], None] | None,
        growing: Mapping[str, KPolicy],
    ) -> tuple[dict[tuple[str, int], Generation], BatchStats]:
        """Generate every lineup's experts; replace the failed ones, ask one more pick where a cascade
        (`growing`, per router) finds the answers so far not enough, and generate again until settled."""
        generations: dict[tuple[str, int], Generation] = {}
        stats = BatchStats()
        while True:
            for name, per_query in lineups.items():
                for index, lineup in enumerate(per_query):
                    lineup.settle(index, generations, sinks.emitted)
                    if (
                        name in growing
                        and lineup.remaining
                        and self._wants_more(growing[name], lineup, batch, index, generations)
                    ):
                        lineup.ask_next()
            needed = list(
                dict.fromkeys(
                    (expert, index)
                    for per_query in lineups.values()
                    for index, lineup in enumerate(per_query)
                    for expert in lineup.called
                    if (expert, index) not in generations
                )
            )
            if not needed:
                return generations, stats
            fresh, more = self._generate(batch, needed, params, sinks, on_progress)
            generations.update(fresh)
            stats.merge(more)

    def _wants_more(
        self,
        policy: KPolicy,
        lineup: Lineup,
        batch: Sequence[Query],
        index: int,
        generations: Mapping[tuple[str, int], Generation],
    ) -> bool:
        """Whether a query's answers so far (all of them generated) leave its cascade unsettled."""
        if any((expert, index) not in generations for expert in lineup.called):
            return False
        so_far = [_expert_answer(batch[index], e, generations[e, index]) for e in lineup.called]
        return not policy.settled(so_far, lineup.remaining, batch[index].category, self.reliability)

    def _generate(
        self,
        batch: Sequence[Query],
        needed: Sequence[tuple[str, int]],
        params: GenerationParams,
        sinks: StreamSinks,
        on_progress: Callable[[int], None] | None,
    ) -> tuple[dict[tuple[str, int], Generation], BatchStats]:
        """Generations for (expert id, query index) pairs, expert-batched by the scheduler."""
        prompts = {i: question_prompt(batch[i]) for i in {i for _, i in needed}}
        requests = [Request(self._expert(e), prompts[i], sinks.sink(e, i)) for e, i in needed]
        outputs, stats = self.scheduler.run(requests, params, on_progress)
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
        lineups: Sequence[Lineup],
        generations: Mapping[tuple[str, int], Generation],
        aggregator: Aggregator,
        shared: dict[str, float],
    ) -> list[Answer]:
        expert_answers = [
            tuple(_expert_answer(query, expert_id, generations[expert_id, index]) for expert_id in lineup.called)
            for index, (query, lineup) in enumerate(zip(batch, lineups, strict=True))
        ]
        voting = [lineup.route_of_answers(route) for route, lineup in zip(routes, lineups, strict=True)]
        started = time.perf_counter()
        verdicts = aggregator.fuse_batch(batch, voting, expert_answers)
        fuse_s = (time.perf_counter() - started) / max(len(batch), 1)
        answers = []
        for query, route, lineup, answers_of_query, verdict in zip(
            batch, routes, lineups, expert_answers, verdicts, strict=True
        ):
            generate_s = sum(a.latency_s for a in answers_of_query)
            cost_usd = sum(
                usd(self.registry[a.expert], a.n_prompt_tokens + a.n_completion_tokens) for a in answers_of_query
            )
            answers.append(
                Answer.model_validate(  # nested models are kept as they are; faster than model_construct
                    {
                        "query_id": query.id,
                        "answer": verdict.text,
                        "choice": verdict.choice,
                        "experts": tuple(a.expert for a in answers_of_query),
                        "expert_answers": answers_of_query,
                        "route": route,
                        "aggregator": aggregator.name,
                        "votes": verdict.votes,
                        "n_prompt_tokens": sum(a.n_prompt_tokens for a in answers_of_query),
                        "n_completion_tokens": sum(a.n_completion_tokens for a in answers_of_query),
                        "cost_usd": cost_usd,
                        "timings": {
                            **shared,
                            "generate_s": generate_s,
                            "fuse_s": fuse_s,
                            "total_s": sum(shared.values()) + generate_s + fuse_s,
                        },
                        "gold": query.gold,
                        "correct": is_correct(verdict.choice, query.gold),
                        "fallbacks": tuple(lineup.fallbacks),
                    }
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
    return ExpertAnswer.model_validate(
        {
            "expert": expert_id,
            "text": generation.text,
            "choice": reading.letter if reading else None,
            "guessed": reading.guessed if reading else False,
            "n_prompt_tokens": generation.n_prompt_tokens,
            "n_completion_tokens": generation.n_completion_tokens,
            "latency_s": generation.latency_s,
            "error": generation.error,
        }
    )
