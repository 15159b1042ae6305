"""`coe serve` as users run it: a real process. On SIGTERM it stops accepting, finishes the request in
flight, writes the request log and exits cleanly; with no stored profile it says what to run."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from coe.settings import Settings
from coe.store import RequestLog, Store
from tests.conftest import EMBEDDED_POOL, REPO, session_processes
from tests.service.conftest import REF8, upstream_pool
from tests.upstream import ANSWER, Upstream


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(settings: Settings, *args: str) -> subprocess.Popen[str]:
    """`coe serve ARGS` in a session of its own (so what it started can be found)."""
    env = {**os.environ, "COE_DATABASE_URL": settings.database_url, "COE_CACHE_DIR": str(settings.cache_dir)}
    command = [sys.executable, "-c", "from coe.cli import main; main()", "serve", *args]
    return subprocess.Popen(
        command,
        env=env,
        cwd=REPO,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def _wait_ready(server: subprocess.Popen[str], url: str) -> None:
    deadline = time.monotonic() + 120
    while True:
        assert server.poll() is None, server.communicate()[1]
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "coe serve did not start"
        time.sleep(0.2)


def test_sigterm_finishes_the_request_in_flight_then_exits(
    tmp_path: Path, module_settings: Settings, upstream: Upstream
) -> None:
    pool = upstream_pool(tmp_path, upstream, {"slow": 0.9})
    port = _free_port()
    server = _serve(
        module_settings, "--pool", pool, "--router", "best-single", "--profile", "priors", "--port", str(port)
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(server, url)
        answers: list[httpx.Response] = []
        body = {"model": "coe", "messages": [{"role": "user", "content": "take your time"}]}
        asking = threading.Thread(
            target=lambda: answers.append(httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60))
        )
        asking.start()
        time.sleep(0.5)  # the request is now waiting on the slow expert (2 s)
        server.send_signal(signal.SIGTERM)
        asking.join()
        _, stderr = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
    assert server.returncode in (0, -signal.SIGTERM), stderr  # uvicorn re-raises the signal once it has stopped
    assert "Traceback" not in stderr
    assert answers[0].status_code == 200 and answers[0].json()["choices"][0]["message"]["content"] == ANSWER
    try:
        httpx.get(f"{url}/healthz", timeout=2)
        raise AssertionError("the stopped service still answers")
    except httpx.TransportError:
        pass
    assert [r.status for r in RequestLog(Store(module_settings.database_url)).since()][-1:] == [200]


def test_a_router_without_a_stored_profile_says_what_to_run(module_settings: Settings) -> None:
    server = _serve(module_settings, "--pool", REF8, "--router", "knn", "--port", str(_free_port()))
    _, stderr = server.communicate(timeout=120)
    assert server.returncode != 0
    assert "no stored profile measured pool" in stderr and "coe profile --pool" in stderr
    assert "--profile priors" in stderr and "Traceback" not in stderr


@pytest.mark.slow
def test_serving_with_the_ray_executor_answers_from_actors_and_leaves_no_process(module_settings: Settings) -> None:
    """`coe serve --executor ray` with no cluster: its composing process starts a private Ray instance,
    the embedded model answers from an actor, and SIGTERM stops it all."""
    port = _free_port()
    args = ["--pool", str(EMBEDDED_POOL), "--router", "best-single", "--profile", "priors", "--executor", "ray"]
    server = _serve(module_settings, *args, "--port", str(port), "--max-tokens", "8")
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(server, url)
        body = {"model": "coe", "messages": [{"role": "user", "content": "What is 2 + 2?"}]}
        answer = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)
        serving = session_processes(server.pid)
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=120)
    finally:
        if server.poll() is None:
            server.kill()
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"].strip()
    assert any("raylet" in p for p in serving) and any("ray::" in p for p in serving), serving
    assert answer.headers["x-coe-experts"] in ("smollm2-135m", "gemma3-270m")
    assert server.returncode in (0, -signal.SIGTERM), stderr
    assert "Traceback" not in stderr
    deadline = time.monotonic() + 30
    while (left := session_processes(server.pid)) and time.monotonic() < deadline:
        time.sleep(1)
    assert not left, f"processes of the service still alive: {left}"
