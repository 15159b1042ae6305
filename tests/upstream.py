"""A small OpenAI-compatible HTTP server for tests: real HTTP on loopback, with experts that misbehave.

The model named in a request picks the behaviour:
- `ok`: answers "The answer is (B)." (streamed word by word when asked);
- `down`: HTTP 503 on every call;
- `flaky`: HTTP 500 on about 30% of calls (a seeded draw per call);
- `once`: HTTP 503 on the first call for each prompt, then answers like `ok`;
- `slow`: answers like `ok` after `slow_s` seconds;
- `garbage`: HTTP 200 with a body that is not JSON;
- `cut`: streams two words, then an error event (a failure mid-stream);
- `null`: HTTP 200 with a reply whose content is null;
- `hold`: streams its first word, then waits for `release` to be set before the rest.

It records the `Authorization` header of every call (`keys`).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ANSWER = "The answer is (B)."


class Upstream:
    """The server's state: calls per model, the seeded failure draws, the prompts seen by `once`."""

    def __init__(self, *, seed: int = 0, failure_rate: float = 0.3, slow_s: float = 2.0) -> None:
        self.calls: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.keys: list[str] = []
        self.release = threading.Event()
        self.failure_rate = failure_rate
        self.slow_s = slow_s
        self._rng = random.Random(seed)
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self.address = ""

    def verdict(self, model: str, prompt: str, key: str) -> int:
        """The HTTP status this call gets (200, or the failure to inject)."""
        with self._lock:
            self.calls[model] += 1
            self.keys.append(key)
            status = 200
            if model == "down":
                status = 503
            elif model == "flaky" and self._rng.random() < self.failure_rate:
                status = 500
            elif model == "once" and prompt not in self._seen:
                self._seen.add(prompt)
                status = 503
            if status != 200:
                self.failures[model] += 1
            return status


def _handler(upstream: Upstream) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return None

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            model = str(body.get("model", ""))
            prompt = str(body.get("messages", [{}])[-1].get("content", ""))
            status = upstream.verdict(model, prompt, self.headers.get("Authorization", ""))
            if status != 200:
                self._send(status, {"error": {"message": f"injected failure ({model})", "type": "server_error"}})
                return
            if model == "slow":
                time.sleep(upstream.slow_s)
            if model == "garbage":
                self._send_raw(200, b"this is not json", "application/json")
                return
            if body.get("stream"):
                self._stream(model)
                return
            content = None if model == "null" else ANSWER
            self._send(
                200,
                {
                    "id": "chatcmpl-upstream",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                    ],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 6, "total_tokens": 16},
                },
            )

        def _stream(self, model: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            words = ANSWER.split(" ")
            base = {"id": "chatcmpl-upstream", "object": "chat.completion.chunk", "created": 0, "model": model}
            for n, word in enumerate(words):
                piece = word if n == 0 else " " + word
                chunk = {**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
                if model == "hold" and n == 0:
                    upstream.release.wait(timeout=60)
                if model == "cut" and n == 1:
                    error = {"error": {"message": "injected failure mid-stream", "type": "server_error"}}
                    self.wfile.write(f"data: {json.dumps(error)}\n\n".encode())
                    self.wfile.flush()
                    self.close_connection = True
                    return
            done = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            usage = {**base, "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 6, "total_tokens": 16}}
            for chunk in (done, usage):
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
            self.close_connection = True

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            self._send_raw(status, json.dumps(payload).encode(), "application/json")

        def _send_raw(self, status: int, data: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (a timeout under test) is expected; anything else is printed."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@contextmanager
def serve_upstream(**options: Any) -> Iterator[Upstream]:
    """Run the server on a free loopback port for the duration of the block."""
    upstream = Upstream(**options)
    server = _Server(("127.0.0.1", 0), _handler(upstream))
    upstream.address = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield upstream
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def litellm_expert(upstream: Upstream, model: str, expert_id: str | None = None, **backend: Any) -> dict[str, Any]:
    """A registry entry (as YAML data) for an expert served by this upstream as `model`."""
    return {
        "id": expert_id or model,
        "base": f"upstream-{model}",
        "backend": {
            "kind": "litellm",
            "model": f"openai/{model}",
            "api_base": upstream.address,
            "api_key_env": "LOCAL_KEY",
            "num_retries": 1,
            "timeout_s": 10,
            **backend,
        },
    }
