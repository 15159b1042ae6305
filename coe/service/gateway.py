"""What the service does with a request, apart from HTTP: decide which composition answers it, queue it
for the next micro-batch, run each batch through the Composer (its fallbacks and the cool-down
included), and keep the metrics and the request log."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

from coe.compose import CompositionSpec
from coe.costs import affordable, call_cost_bound, query_cost_bounds
from coe.errors import ConfigError
from coe.schema import Query
from coe.service.batches import Asked, Refusal
from coe.service.composing import Composing, Job, Result
from coe.service.compositions import SERVED_ROUTERS, Compositions
from coe.service.config import ServiceConfig
from coe.service.cooldown import Cooldown
from coe.service.errors import ServiceError, bad_request, failure_error
from coe.service.metrics import Metrics
from coe.service.protocol import ChatCompletionRequest, ChatMessage, CoeOptions, message_text
from coe.service.recorder import Recorder
from coe.service.served import Served
from coe.store import RequestLog, ServedRequest
from coe.types import BatchStats, GenerationParams

logger = logging.getLogger(__name__)

_REQUEST_IDS = random.Random()
"""Request ids: unique, not secret; seeded once from the system, since a system draw per request (a
syscall) costs more than the rest of `decide`."""


@dataclass(frozen=True, slots=True)
class Ask:
    """One chat request, decided: the composition, the question, the generation settings."""

    request_id: str
    model: str
    spec: CompositionSpec
    query_id: str
    text: str
    choices: tuple[str, ...] | None
    params: GenerationParams
    experts: frozenset[str] | None
    free_form: bool
    stream: bool

    def query(self) -> Query:
        """The question as routers take it, built where needed: the composing side builds its own
        (the HTTP process, the service's busiest, neither builds nor pickles one per request)."""
        return Query(id=self.query_id, text=self.text, choices=self.choices)


@dataclass(frozen=True, slots=True)
class Outcome:
    """A request's answer, with what its batch cost."""

    answer: Served
    stats: BatchStats
    batch_size: int
    queue_s: float


@dataclass(frozen=True, slots=True)
class Piece:
    """A piece of a streamed answer."""

    expert: str
    text: str


class Gateway:
    def __init__(self, config: ServiceConfig, compositions: Compositions, log: RequestLog) -> None:
        self.config = config
        self.compositions = compositions
        self.metrics = Metrics()
        self._models = frozenset(compositions.models())
        self.cooldown = Cooldown(after=config.cooldown_after, seconds=config.cooldown_s)
        self._cooling = 0
        """How many experts the metrics last showed cooling down."""
        self.recorder = Recorder(log)
        self.composing = Composing(
            compositions,
            config,
            on_result=self._answered,
            on_piece=lambda job, expert, text: job.put(Piece(expert, text)),
            on_batch=self.metrics.batch_size.observe,
            on_depth=self.metrics.queue_depth.set,
        )
        self.ready = False

    # ----------------------------------------------------------------------- life cycle

    async def start(self) -> None:
        """Start the composing side (its composition built, its query encoder loaded, else the first
        batch waits for them), the request log and the batches; call from the loop."""
        await self.composing.start()
        self.recorder.start()
        self.ready = True

    async def stop(self) -> None:
        """Finish every queued request, write the log, unload the models."""
        self.ready = False
        await self.composing.stop()
        self.recorder.stop()

    # ----------------------------------------------------------------------- requests

    def decide(self, body: ChatCompletionRequest) -> Ask:
        """Which composition answers, with which settings; a 400 or 404 naming the field otherwise."""
        options = body.coe or CoeOptions()
        spec, experts = self.composition(body.model, options)
        if body.n not in (None, 1):
            raise bad_request("only n = 1 is supported (the composition gives one answer)", "n")
        text = question_text(body.messages)
        if len(text) > self.config.max_prompt_chars:
            raise ServiceError(
                413,
                f"the question has {len(text)} characters; at most {self.config.max_prompt_chars} are served",
                param="messages",
                code="request_too_large",
            )
        max_tokens = body.max_completion_tokens or body.max_tokens or spec.generation.max_tokens
        if max_tokens > self.config.max_tokens_limit:
            field = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
            raise bad_request(
                f"{field} is {max_tokens}; this service allows at most {self.config.max_tokens_limit}", field
            )
        stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
        params = GenerationParams(
            max_tokens=max_tokens,
            temperature=spec.generation.temperature if body.temperature is None else body.temperature,
            seed=spec.generation.seed if body.seed is None else body.seed,
            stop=stop,
        )
        if options.max_cost_usd is not None:
            experts = self._affordable(experts, options.max_cost_usd, len(text), max_tokens, options.k or spec.k)
        request_id = f"chatcmpl-{_REQUEST_IDS.getrandbits(96):024x}"
        choices = tuple(options.choices) if options.choices else None
        ask = Ask(
            request_id=request_id,
            model=body.model,
            spec=spec,
            query_id=options.query_id or request_id,
            text=text,
            choices=choices,
            params=params,
            experts=experts,
            free_form=choices is None and options.aggregator is None,
            stream=bool(body.stream),
        )
        if spec.max_cost_usd is not None:
            self._within_composition_cap(spec.max_cost_usd, ask.query(), experts, max_tokens)
        return ask

    def composition(self, model: str, options: CoeOptions) -> tuple[CompositionSpec, frozenset[str] | None]:
        """The composition a request names (`coe`, `coe/<router>`, an expert id) with its options."""
        pool = set(self.compositions.registry)
        if options.experts is not None:
            unknown = sorted(set(options.experts) - pool)
            if unknown:
                raise bad_request(
                    f"unknown expert(s) {', '.join(unknown)}; known: {', '.join(sorted(pool))}", "coe.experts"
                )
        experts = frozenset(options.experts) if options.experts is not None else None
        if model in pool:
            if experts is not None and model not in experts:
                raise bad_request(f"model {model!r} is an expert outside `coe.experts`", "coe.experts")
            return self.compositions.proxy(model), frozenset({model})
        router = options.router
        if model.startswith("coe/") and router is None:
            router = model.removeprefix("coe/")
            if router not in SERVED_ROUTERS:
                raise _unknown_model(model)
        elif model != "coe" and not model.startswith("coe/"):
            raise _unknown_model(model)
        if router is not None and router not in SERVED_ROUTERS:
            raise bad_request(f"unknown router {router!r}; served: {', '.join(SERVED_ROUTERS)}", "coe.router")
        if options.k is not None and options.k > len(pool):
            raise bad_request(f"k is {options.k} but the pool has {len(pool)} experts", "coe.k")
        return self.compositions.variant(router=router, k=options.k, aggregator=options.aggregator), experts

    def _affordable(
        self, experts: frozenset[str] | None, budget: float, n_chars: int, max_tokens: int, k: int
    ) -> frozenset[str]:
        """The experts whose worst-case cost for this request (about 4 characters a token), times k,
        fits the budget."""
        registry = self.compositions.registry
        candidates = experts if experts is not None else frozenset(registry)
        worst = {e: call_cost_bound(registry[e], n_chars, max_tokens) for e in candidates}
        allowed = frozenset(e for e, cost in worst.items() if cost * k <= budget)
        if not allowed:
            cheapest = min(worst.values())
            raise bad_request(
                f"no expert fits max_cost_usd={budget}: the cheapest may cost {cheapest:.6f} USD per call, "
                f"{k} calls per question",
                "coe.max_cost_usd",
            )
        return allowed

    def _within_composition_cap(
        self, cap: float, query: Query, experts: frozenset[str] | None, max_tokens: int
    ) -> None:
        """A question the composition's own per-query cost cap admits no expert for is refused here,
        alone (400), rather than by the Composer with every request of the batch it joined."""
        registry = self.compositions.registry
        candidates = [registry[e] for e in experts] if experts is not None else registry.experts
        try:
            affordable(query_cost_bounds(candidates, query, max_tokens), cap, query.id)
        except ConfigError as error:
            raise bad_request(str(error), "max_tokens") from None

    def submit(self, ask: Ask) -> Job[Ask]:
        """Queue the request for the next micro-batch (429 when the queue is full)."""
        job = Job(ask)
        key = self.compositions.key(ask.spec)
        avoid = self.cooldown.avoid()
        if len(avoid) != self._cooling:
            self._cooling = len(avoid)
            self.metrics.cooling.set(self._cooling)
        asked = Asked(
            job.ticket,
            key,
            ask.free_form,
            ask.query_id,
            ask.text,
            ask.choices,
            (ask.params.max_tokens, ask.params.temperature, ask.params.seed, ask.params.stop),
            ask.experts,
            ask.stream,
            avoid,
        )
        self.composing.submit(job, asked, ask.spec)
        return job

    async def next_event(self, job: Job[Ask], deadline: float) -> Piece | Outcome:
        """The job's next event (a piece of text, or its outcome); its error raised; 504 past the deadline."""
        try:
            event = await job.next(deadline)
        except TimeoutError:
            self.composing.drop(job)
            raise ServiceError(
                504,
                f"no answer within {self.config.request_timeout_s:g} s",
                kind="timeout",
                code="timeout",
            ) from None
        if isinstance(event, ServiceError):
            raise event
        if isinstance(event, BaseException):
            raise event
        return event

    # ----------------------------------------------------------------------- batches

    def _answered(self, jobs: list[Job[Ask]], result: Result) -> None:
        """Each job's outcome (or the error it gets), with the metrics and the cool-down updated."""
        if isinstance(result, Refusal):
            for job in jobs:
                job.put(ServiceError(result.status, result.message, kind=result.kind, code=result.code))
            return
        if isinstance(result, BaseException):
            for job in jobs:
                job.put(result)
            return
        answers, stats = result
        self.metrics.observe_batch(answers, stats)
        self.cooldown.record(answers)
        for job, answer in zip(jobs, answers, strict=True):
            queue_s = (job.started_at or job.enqueued_at) - job.enqueued_at
            if any(call.failure is None for call in answer.calls):
                job.put(Outcome(answer=answer, stats=stats, batch_size=job.batch_size, queue_s=queue_s))
            else:
                refused = failure_error(answer.failures)
                refused.answer = answer
                job.put(refused)

    # ----------------------------------------------------------------------- records

    def record(
        self,
        *,
        model: str,
        status: int,
        latency_s: float,
        key_name: str | None,
        answer: Served | None = None,
        error_kind: str | None = None,
        prompt: str | None = None,
    ) -> None:
        """One served (or refused) request, in the metrics and the request log."""
        # A model no one serves is counted as "-": clients cannot add label values (series) at will.
        self.metrics.observe_request(model if model in self._models else "-", status, latency_s, error_kind)
        self.recorder.add(
            ServedRequest(
                model=model,
                status=status,
                router=answer.router if answer else None,
                aggregator=answer.aggregator if answer else None,
                experts=tuple(answer.answered) if answer else (),
                fallbacks=tuple((f.expert, f.replacement or "") for f in answer.fallbacks) if answer else (),
                error_kind=error_kind,
                latency_s=latency_s,
                n_prompt_tokens=answer.n_prompt_tokens if answer else 0,
                n_completion_tokens=answer.n_completion_tokens if answer else 0,
                cost_usd=answer.cost_usd if answer else 0.0,
                key_name=key_name,
                prompt=prompt if self.config.log_prompts else None,
            )
        )


def question_text(messages: list[ChatMessage]) -> str:
    """The question the experts are asked: the user's message, or the conversation as a transcript."""
    texts = []
    for index, message in enumerate(messages):
        text = message_text(message.content)
        if text is None:
            raise bad_request("only text content is served", f"messages[{index}].content")
        texts.append((message.role, text))
    last = len(messages) - 1
    if messages[-1].role != "user":
        raise bad_request("the last message must come from the user", f"messages[{last}].role")
    if not texts[-1][1].strip():
        raise bad_request("the question is empty", f"messages[{last}].content")
    if len(texts) == 1:
        return texts[0][1]
    return "\n\n".join(f"{role.capitalize()}: {text}" for role, text in texts)


def _unknown_model(model: str) -> ServiceError:
    return ServiceError(
        404,
        f"the model {model!r} does not exist: use coe, coe/<router> or an expert id (GET /v1/models)",
        param="model",
        code="model_not_found",
    )
