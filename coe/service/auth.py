"""API keys at the door: `Authorization: Bearer KEY`, checked against the hashes in the database
(re-read every `refresh_s`, so a revoked key stops working within that time), with an optional
per-key request rate. The key itself is never logged or kept; only its name travels on."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from coe.service.errors import ServiceError
from coe.service.protocol import error_body
from coe.store import ApiKey, KeyStore, hash_key


class Gatekeeper:
    def __init__(
        self,
        keys: KeyStore,
        *,
        required: bool = False,
        refresh_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.keys = keys
        self.required = required
        """Keys are required even when none exists (a service bound beyond loopback)."""
        self.refresh_s = refresh_s
        self._clock = clock
        self._keys: dict[str, ApiKey] = {}
        self._read_at = -float("inf")
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    @property
    def has_keys(self) -> bool:
        """Whether any key was ever created (revoking every key does not open the service)."""
        return bool(self._keys)

    def stale(self) -> bool:
        return self._clock() - self._read_at >= self.refresh_s

    def refresh(self) -> None:
        """Re-read the keys (a database query: call it off the event loop)."""
        keys = self.keys.by_hash()
        with self._lock:
            self._keys, self._read_at = keys, self._clock()

    def admit(self, authorization: str | None) -> str | None:
        """The name of the key presented, or None when no key is needed; 401 or 429 otherwise."""
        if not self._keys and not self.required:
            return None
        scheme, _, secret = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise _unauthorized(
                "missing API key: send `Authorization: Bearer <key>` (create one with `coe keys create`)"
            )
        key = self._keys.get(hash_key(secret.strip()))
        if key is None:
            raise _unauthorized("invalid API key")
        if not key.active:
            raise _unauthorized(f"API key {key.name!r} was revoked")
        if key.rate_limit_per_min:
            self._take(key.name, key.rate_limit_per_min)
        return key.name

    def _take(self, name: str, per_minute: int) -> None:
        """A token bucket per key: `per_minute` requests a minute, bursts up to that many."""
        now = self._clock()
        with self._lock:
            tokens, then = self._buckets.get(name, (float(per_minute), now))
            tokens = min(float(per_minute), tokens + (now - then) * per_minute / 60)
            if tokens < 1:
                wait = (1 - tokens) * 60 / per_minute
                self._buckets[name] = (tokens, now)
                raise ServiceError(
                    429,
                    f"rate limit of key {name!r} reached ({per_minute} requests per minute)",
                    kind="rate_limit_error",
                    code="rate_limit_exceeded",
                    headers={"Retry-After": str(max(1, round(wait)))},
                )
            self._buckets[name] = (tokens - 1, now)


def _unauthorized(message: str) -> ServiceError:
    return ServiceError(
        401, message, kind="invalid_request_error", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
    )


class KeyCheck:
    """ASGI middleware: every `/v1/` request passes the gatekeeper before anything reads its body; the
    request's start time and key name go to its state for the endpoints and the request log."""

    def __init__(self, app: ASGIApp, gate: Gatekeeper, on_refused: Callable[[ServiceError, float], None]) -> None:
        self.app = app
        self.gate = gate
        self.on_refused = on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        state["started"] = started
        if scope["path"].startswith("/v1/"):
            if self.gate.stale():
                await asyncio.to_thread(self.gate.refresh)
            authorization = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            try:
                state["key_name"] = self.gate.admit(authorization or None)
            except ServiceError as error:
                self.on_refused(error, time.perf_counter() - started)
                body = json.dumps(error_body(error.message, error.kind, error.code, error.param)).encode()
                headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                headers += [(name.lower().encode(), value.encode()) for name, value in error.headers.items()]
                await send({"type": "http.response.start", "status": error.status, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
