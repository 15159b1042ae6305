"""The HTTP face: an OpenAI-compatible FastAPI app over the gateway (an app factory, so tests and any
ASGI server can build it). Errors leave as OpenAI's error object with the right status; never a
traceback."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic_core import to_json
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp

from coe.compose import CompositionBuilder
from coe.errors import CoeError, ConfigError
from coe.recovery import restricted
from coe.service.auth import Gatekeeper, KeyCheck
from coe.service.batches import prepared
from coe.service.config import ServiceConfig
from coe.service.direct import DirectChat
from coe.service.errors import ServiceError, from_coe_error
from coe.service.gateway import Ask, Gateway, Outcome, Piece
from coe.service.limits import BodyLimit
from coe.service.protocol import ChatCompletionRequest, RouteRequest, chat_completion, chunk, error_body, usage
from coe.service.served import Served, coe_object, with_coe
from coe.settings import Settings
from coe.store import KeyStore, RequestLog

logger = logging.getLogger(__name__)


def create_app(
    config: ServiceConfig, *, settings: Settings | None = None, builder: CompositionBuilder | None = None
) -> FastAPI:
    """The service's app. Its composition is built (the router fitted) here, so a missing profile or
    pool fails now, with a message saying what to run."""
    builder = builder or CompositionBuilder(settings or Settings())
    compositions = prepared(builder, config)
    registry = compositions.registry
    gateway = Gateway(config, compositions, RequestLog(builder.store))
    gate = Gatekeeper(KeyStore(builder.store), required=config.keys_required, refresh_s=config.key_refresh_s)
    gate.refresh()
    if config.keys_required and not gate.has_keys:
        raise ConfigError(
            f"serving on {config.host} needs API keys: create one with `coe keys create NAME` "
            "(keys are required beyond loopback)"
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        yield
        await gateway.stop()

    app = _Service(
        title="coe",
        summary="Composition of Experts: one OpenAI-compatible model over a routed pool of experts.",
        version="0.1.0",
        lifespan=lifespan,
        # FastAPI's OpenTelemetry hooks look for providers on every request (the service has none
        # configured; its metrics are Prometheus'): off, they cost nothing.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )

    # ----------------------------------------------------------------------- errors

    def refuse(request: Request, error: ServiceError) -> JSONResponse:
        started = getattr(request.state, "started", time.perf_counter())
        gateway.record(
            model=getattr(request.state, "model", "-"),
            status=error.status,
            latency_s=time.perf_counter() - started,
            key_name=getattr(request.state, "key_name", None),
            answer=error.answer,
            error_kind=error.code or error.kind,
            prompt=getattr(request.state, "prompt", None),
        )
        return JSONResponse(
            error_body(error.message, error.kind, error.code, error.param), error.status, headers=error.headers
        )

    def handled(request: Request, error: Exception) -> JSONResponse:
        """The response to any error: DirectChat's, which runs outside FastAPI's handlers, and theirs."""
        if isinstance(error, ServiceError):
            return refuse(request, error)
        if isinstance(error, CoeError):
            return refuse(request, from_coe_error(error))
        logger.error("internal error answering %s %s: %r", request.method, request.url.path, error, exc_info=error)
        internal = ServiceError(500, "internal error; the service log has the details", kind="server_error")
        return refuse(request, internal)

    @app.exception_handler(ServiceError)
    @app.exception_handler(CoeError)
    @app.exception_handler(Exception)
    async def _error(request: Request, error: Exception) -> JSONResponse:
        return handled(request, error)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return refuse(request, invalid_request(error))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, error: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return refuse(request, ServiceError(error.status_code, str(error.detail), code=code))

    # ----------------------------------------------------------------------- endpoints

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"description": "Not ready"}})
    async def readyz() -> JSONResponse:
        """Routers fitted, pool valid, workers running."""
        if not gateway.ready:
            return JSONResponse(error_body("not ready", "service_unavailable", "not_ready"), 503)
        spec = compositions.spec
        return JSONResponse(
            {"status": "ready", "pool": spec.pool, "router": spec.router.name, "experts": list(registry)}
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus text format."""
        return Response(gateway.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [_model(name) for name in compositions.models()]}

    @app.get("/v1/models/{model:path}", responses={404: {"description": "No such model"}})
    async def model(model: str) -> dict[str, Any]:
        if model not in compositions.models():
            raise ServiceError(404, f"the model {model!r} does not exist", param="model", code="model_not_found")
        return _model(model)

    @app.post("/v1/route", responses=_ERRORS)
    async def route(request: Request, body: RouteRequest) -> dict[str, Any]:
        """The routing decision for a question, without generating."""
        key = request.state.key_name
        request.state.model = body.model
        ask = gateway.decide(ChatCompletionRequest(model=body.model, messages=body.messages, coe=body.coe))

        def decide() -> dict[str, Any]:
            decided = compositions.composer(ask.spec).router.route([ask.query()])[0]
            if ask.experts is not None:
                decided = restricted(decided, ask.experts)
            return decided.model_dump(mode="json")

        decision = await asyncio.to_thread(decide)
        avoid = gateway.cooldown.avoid()
        gateway.record(
            model=body.model, status=200, latency_s=time.perf_counter() - request.state.started, key_name=key
        )
        return {"model": body.model, "route": decision, "cooling_down": sorted(avoid)}

    @app.post("/v1/chat/completions", responses=_ERRORS)
    async def chat_completions(request: Request, body: ChatCompletionRequest) -> Response:
        """OpenAI's chat completions: `model` = coe, coe/<router> or an expert id; options in `coe`."""
        return await complete(request, body)

    async def complete(request: Request, body: ChatCompletionRequest) -> Response:
        """A chat completion (the route's and DirectChat's): queued for the next batch, then answered
        whole or streamed."""
        key = request.state.key_name
        started = request.state.started
        request.state.model = body.model
        ask = gateway.decide(body)
        request.state.prompt = ask.text
        job = gateway.submit(ask)
        deadline = started + config.request_timeout_s
        first = await gateway.next_event(job, deadline)
        if ask.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = _stream(
                gateway, ask, first, lambda: gateway.next_event(job, deadline), started, key, include_usage
            )
            return StreamingResponse(events, media_type="text/event-stream", headers=_headers(ask, first, started))
        assert isinstance(first, Outcome)
        answer = first.answer
        total_s = time.perf_counter() - started
        gateway.record(model=body.model, status=200, latency_s=total_s, key_name=key, answer=answer, prompt=ask.text)
        gateway.metrics.overhead.observe(_overhead_s(answer, total_s))
        content = with_coe(
            chat_completion(ask.request_id, ask.model, answer, _finish(answer)), _coe(ask, first, total_s)
        )
        return Response(content, media_type="application/json", headers=_headers(ask, first, started))

    def front(framework: ASGIApp) -> ASGIApp:
        """The key check, then the body limit, then DirectChat, then the framework's stack."""
        direct = BodyLimit(DirectChat(framework, answer=complete, refuse=handled), max_bytes=config.max_body_bytes)
        return KeyCheck(direct, gate=gate, on_refused=lambda error, seconds: _refused(gateway, error, seconds))

    app.front = front
    return app


class _Service(FastAPI):
    """FastAPI with the service's own layers outside the framework's middleware (its error and
    telemetry wrappers, its own body limit): a chat completion that DirectChat answers passes through
    none of them. What DirectChat passes on gets the framework's whole stack, as before."""

    front: Callable[[ASGIApp], ASGIApp] = staticmethod(lambda framework: framework)

    def build_middleware_stack(self) -> ASGIApp:
        return self.front(super().build_middleware_stack())


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"description": description}
    for status, description in (
        (400, "Bad request (the message names the field)"),
        (401, "Missing, invalid or revoked API key"),
        (404, "Unknown model"),
        (413, "Request too large"),
        (429, "Queue full or key rate limit reached (see Retry-After)"),
        (503, "No expert available"),
        (504, "Timed out"),
    )
}


def _refused(gateway: Gateway, error: ServiceError, latency_s: float) -> None:
    """A request the key check refused, in the metrics and the request log."""
    gateway.record(model="-", status=error.status, latency_s=latency_s, key_name=None, error_kind=error.code)


def invalid_request(error: RequestValidationError) -> ServiceError:
    """A validation error as a 400 naming the first bad field (`messages[0].role`)."""
    problems = error.errors()
    first = problems[0] if problems else {"loc": (), "msg": "invalid request"}
    path = [part for part in first["loc"] if part != "body"]
    param = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in path).lstrip(".") or None
    more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
    return ServiceError(400, f"{param or 'body'}: {first['msg']}{more}", param=param, code="invalid_value")


async def _stream(
    gateway: Gateway,
    ask: Ask,
    first: Piece | Outcome,
    following: Callable[[], Awaitable[Piece | Outcome]],
    started: float,
    key: str | None,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """Server-sent events in OpenAI's chunk format: the role, each piece as the expert writes it (or
    the fused answer whole), a last chunk with the finish reason and the `coe` object, `[DONE]`. A
    failure midway ends the stream with an error event."""
    yield _sse(chunk(ask.request_id, ask.model, {"role": "assistant", "content": ""}))
    event, streamed = first, False
    try:
        while isinstance(event, Piece):
            streamed = True
            yield _sse(chunk(ask.request_id, ask.model, {"content": event.text}))
            event = await following()
    except ServiceError as error:
        gateway.record(
            model=ask.model,
            status=error.status,
            latency_s=time.perf_counter() - started,
            key_name=key,
            answer=error.answer,
            error_kind=error.code or error.kind,
            prompt=ask.text,
        )
        yield _sse(error_body(error.message, error.kind, error.code, error.param))
        return
    answer = event.answer
    if not streamed:
        yield _sse(chunk(ask.request_id, ask.model, {"content": answer.text}))
    total_s = time.perf_counter() - started
    last = chunk(ask.request_id, ask.model, {}, _finish(answer))
    yield _event(with_coe(last, _coe(ask, event, total_s)))
    if include_usage:
        yield _sse({**chunk(ask.request_id, ask.model, {}), "choices": [], "usage": usage(answer)})
    yield b"data: [DONE]\n\n"
    gateway.record(model=ask.model, status=200, latency_s=total_s, key_name=key, answer=answer, prompt=ask.text)
    gateway.metrics.overhead.observe(_overhead_s(answer, total_s))


def _sse(data: dict[str, Any]) -> bytes:
    return _event(to_json(data))


def _event(data: bytes) -> bytes:
    """A server-sent event carrying `data` (JSON)."""
    return b"data: " + data + b"\n\n"


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "coe"}


def _finish(answer: Served) -> str:
    """`length` when the answering expert stopped at max_tokens."""
    return "length" if answer.cut else "stop"


def _overhead_s(answer: Served, total_s: float) -> float:
    """Time not spent in experts: the request's wall time less its experts' generation and loads."""
    return max(total_s - answer.generation_s, 0.0)


def _headers(ask: Ask, first: Piece | Outcome, started: float) -> dict[str, str]:
    if isinstance(first, Piece):
        experts, router = [first.expert], ask.spec.router.name
    else:
        experts, router = first.answer.answered, first.answer.router
    headers = {"x-request-id": ask.request_id, "x-coe-router": router, "x-coe-experts": ",".join(experts)}
    if isinstance(first, Outcome):
        overhead = _overhead_s(first.answer, time.perf_counter() - started)
        headers["x-coe-overhead-ms"] = f"{overhead * 1000:.1f}"
    return headers


def _coe(ask: Ask, outcome: Outcome, total_s: float) -> bytes:
    """The response's `coe` object: route, each expert's answer, aggregator, votes, fallbacks, cost, timings."""
    timings = {"queue_s": outcome.queue_s, "overhead_s": _overhead_s(outcome.answer, total_s), "request_s": total_s}
    return coe_object(outcome.answer, ask.request_id, outcome.batch_size, timings)
