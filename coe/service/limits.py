"""A request body larger than the service takes is refused with 413 before anything reads it whole."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coe.service.protocol import error_body


class BodyLimit:
    """ASGI middleware: 413 for a declared Content-Length over `max_bytes`, or a chunked body that grows past it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if declared.isdigit() and int(declared) > self.max_bytes:
                await self._refuse(send)
                return
            await self.app(scope, receive, send)
            return
        received: list[Message] = []
        size, more = 0, True
        while more:
            message = await receive()
            received.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
            if size > self.max_bytes:
                await self._refuse(send)
                return
        await self.app(scope, replaying(received, receive), send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(
            error_body(f"the request body exceeds {self.max_bytes} bytes", "invalid_request_error", "request_too_large")
        ).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def replaying(received: list[Message], receive: Receive) -> Receive:
    """A `receive` that gives the messages already read, then reads on: the body, for the app after us."""

    async def replay() -> Message:
        return received.pop(0) if received else await receive()

    return replay
