"""Chat completions without the framework's per-request machinery: a well-formed request (a JSON body
that validates) is answered straight from the ASGI call, by the same handler the FastAPI route calls.
Anything else goes on to the FastAPI route, which answers it exactly as before (its errors, its
OpenAPI document). Under 64 concurrent clients the routing, dependency solving and middleware layers
this skips cost about as much CPU as composing the request's answer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coe.service.limits import replaying
from coe.service.protocol import ChatCompletionRequest

PATH = "/v1/chat/completions"


class DirectChat:
    """ASGI middleware: POST /v1/chat/completions with a JSON body that validates goes to `answer`;
    any error it raises goes to `refuse`, which answers it; every other request passes on."""

    def __init__(
        self,
        app: ASGIApp,
        answer: Callable[[Request, ChatCompletionRequest], Awaitable[Response]],
        refuse: Callable[[Request, Exception], Response],
    ) -> None:
        self.app = app
        self.answer = answer
        self.refuse = refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != PATH:
            await self.app(scope, receive, send)
            return
        received: list[Message] = []
        while True:
            message = await receive()
            received.append(message)
            if message["type"] != "http.request" or not message.get("more_body", False):
                break
        body = _valid(scope, received)
        if body is None:  # the route answers it: the framework's validation errors, word for word
            await self.app(scope, replaying(received, receive), send)
            return
        request = Request(scope, receive, send)
        try:
            response = await self.answer(request, body)
        except Exception as error:  # outside the framework's error handlers: every error is answered here
            response = self.refuse(request, error)
        await response(scope, receive, send)


def _valid(scope: Scope, received: list[Message]) -> ChatCompletionRequest | None:
    """The request, when it is a whole `application/json` body that parses and validates."""
    if received[-1]["type"] != "http.request":
        return None
    content_type = next((value for name, value in scope["headers"] if name == b"content-type"), b"")
    if content_type.partition(b";")[0].strip().lower() != b"application/json":
        return None
    try:
        return ChatCompletionRequest.model_validate_json(b"".join(message.get("body", b"") for message in received))
    except ValueError:  # pydantic's ValidationError, for the JSON and for what it says alike
        return None
