"""Where batches are composed: a process of its own (the default) or the service's batch thread. Both
answer alike; a composing process that dies fails only the batch it held and is started again."""

import multiprocessing
import os
import signal
import time

import httpx
from openai import OpenAI

from coe.compose import CompositionSpec, compose
from coe.schema import Query
from coe.settings import Settings
from tests.service.conftest import REF8, running

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


def test_a_composing_process_that_dies_fails_one_batch_and_is_restarted(
    module_settings: Settings, mmlu_test: list[Query]
) -> None:
    before = {child.pid for child in multiprocessing.active_children()}
    with running(SPEC, module_settings) as url:
        composers = [c for c in multiprocessing.active_children() if c.name == "coe-composer" and c.pid not in before]
        assert len(composers) == 1
        assert _ask(url, mmlu_test[0]).status_code == 200
        assert composers[0].pid is not None
        os.kill(composers[0].pid, signal.SIGKILL)
        composers[0].join(timeout=10)
        refused = _ask(url, mmlu_test[1])
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "composer_restarted"
        started = time.monotonic()
        answered = _ask(url, mmlu_test[1])
        assert answered.status_code == 200, answered.text
        assert answered.json()["choices"][0]["message"]["content"]
        assert time.monotonic() - started < 60
        metrics = httpx.get(f"{url}/metrics").text
        assert 'coe_errors_total{kind="composer_restarted"} 1.0' in metrics
