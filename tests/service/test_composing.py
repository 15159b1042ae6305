"""Where batches are composed: a process of its own (the default) or a thread of the service's. Both
answer alike; a composing process that dies fails only the requests it held and is started again, and
requests that arrive meanwhile wait for it."""

import multiprocessing
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.process import BaseProcess
from pathlib import Path

import httpx
from openai import OpenAI

from coe.compose import CompositionSpec, compose
from coe.schema import Query
from coe.settings import Settings
from tests.service.conftest import REF8, running, upstream_pool
from tests.upstream import Upstream

SPEC = CompositionSpec(pool=REF8, router="knn", profile="priors", k=3, aggregator="weighted")


def _ask(url: str, question: Query) -> httpx.Response:
    body = {
        "model": "coe",
        "messages": [{"role": "user", "content": question.text}],
        "coe": {"query_id": question.id, "choices": list(question.choices or ())},
    }
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)


def test_a_thread_and_a_process_compose_the_same_answers(module_settings: Settings, mmlu_test: list[Query]) -> None:
    questions = [Query(id=q.id, text=q.text, choices=q.choices) for q in mmlu_test[:6]]
    with compose(SPEC, settings=module_settings) as composer:
        expected = [answer.answer for answer in composer.ask_batch(questions)]
    for kind in ("thread", "process"):
        with running(SPEC, module_settings, composer=kind) as url:
            client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
            answers = []
            for question in questions:
                extra = {"coe": {"query_id": question.id, "choices": list(question.choices or ())}}
                messages = [{"role": "user", "content": question.text}]
                completion = client.chat.completions.create(model="coe", messages=messages, extra_body=extra)
                streamed = client.chat.completions.create(model="coe", messages=messages, extra_body=extra, stream=True)
                text = "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)
                assert text == completion.choices[0].message.content
                answers.append(text)
        assert answers == expected, kind


def test_a_composing_process_that_dies_fails_what_it_held_and_is_started_again(
    tmp_path: Path, module_settings: Settings, upstream: Upstream
) -> None:
    spec = _one_expert(tmp_path, upstream, "slow")
    before = {child.pid for child in multiprocessing.active_children()}
    with running(spec, module_settings, composer="process") as url:
        composers = _composers_since(before)
        assert len(composers) == 1 and composers[0].pid is not None
        with ThreadPoolExecutor() as pool_of_clients:
            held = pool_of_clients.submit(_ask_text, url, "take your time")
            time.sleep(0.5)  # the request now waits on the slow expert (2 s), in the composing process
            os.kill(composers[0].pid, signal.SIGKILL)
            refused = held.result()
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "composer_restarted"
            started = time.monotonic()
            asked_meanwhile = [pool_of_clients.submit(_ask_text, url, f"question {i}") for i in range(3)]
            assert [answer.result().status_code for answer in asked_meanwhile] == [200, 200, 200]
        assert time.monotonic() - started < 60
        restarted = _composers_since(before)
        assert len(restarted) == 1 and restarted[0].pid != composers[0].pid
        metrics = httpx.get(f"{url}/metrics").text
        assert 'coe_errors_total{kind="composer_restarted"} 1.0' in metrics


def _one_expert(tmp_path: Path, upstream: Upstream, model: str) -> CompositionSpec:
    """A composition of one expert the upstream serves as `model`."""
    pool = upstream_pool(tmp_path, upstream, {model: 0.9})
    return CompositionSpec.model_validate({"pool": pool, "router": "best-single", "profile": "priors"})


def _composers_since(before: set[int | None]) -> list[BaseProcess]:
    """The composing processes alive now that were not among the children `before`."""
    return [c for c in multiprocessing.active_children() if c.name == "coe-composer" and c.pid not in before]


def _ask_text(url: str, text: str) -> httpx.Response:
    body = {"model": "coe", "messages": [{"role": "user", "content": text}]}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)


def test_a_service_stopped_while_its_composing_process_restarts_stops_the_new_one(
    tmp_path: Path, module_settings: Settings, upstream: Upstream
) -> None:
    spec = _one_expert(tmp_path, upstream, "ok")
    before = {child.pid for child in multiprocessing.active_children()}
    with running(spec, module_settings, composer="process") as url:
        assert _ask_text(url, "a question").status_code == 200
        (first,) = _composers_since(before)
        assert first.pid is not None
        os.kill(first.pid, signal.SIGKILL)
        first.join(timeout=10)
        time.sleep(0.2)  # the event loop sees the socket close and starts a new process
    assert _composers_since(before) == []
