"""Every refusal is OpenAI's error object with the right status, naming the field at fault; never a
traceback."""

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from coe.compose import CompositionSpec
from coe.settings import Settings
from tests.service.conftest import REF8, running, upstream_pool
from tests.upstream import Upstream

USER = [{"role": "user", "content": "Which is larger, 2 or 3?"}]


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert "Traceback" not in response.text and body["error"]["message"]
    return body["error"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "coe"}, "messages"),
        ({"model": "coe", "messages": []}, "messages"),
        ({"model": "coe", "messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"model": "coe", "messages": USER, "temperature": 7}, "temperature"),
        ({"model": "coe", "messages": USER, "coe": {"k": 0}}, "coe.k"),
        ({"model": "coe", "messages": USER, "coe": {"k": 9}}, "coe.k"),
        ({"model": "coe", "messages": USER, "coe": {"colour": "red"}}, "coe.colour"),
        ({"model": "coe", "messages": USER, "coe": {"choices": ["only one"]}}, "coe.choices"),
        ({"model": "coe", "messages": USER, "coe": {"choices": ["2", " "]}}, "coe.choices"),
        ({"model": "coe", "messages": [{"role": "user", "content": " "}]}, "messages[0].content"),
        ({"model": "coe", "messages": [{"role": "user", "content": None}]}, "messages[0].content"),
        ({"model": "coe", "messages": USER, "coe": {"router": "smart"}}, "coe.router"),
        ({"model": "coe", "messages": USER, "coe": {"experts": ["gpt-9"]}}, "coe.experts"),
        ({"model": "coe", "messages": USER, "coe": {"max_cost_usd": 0}}, "coe.max_cost_usd"),
        ({"model": "coe", "messages": USER, "n": 2}, "n"),
        ({"model": "coe", "messages": USER, "max_tokens": 10**6}, "max_tokens"),
        ({"model": "coe", "messages": [*USER, {"role": "assistant", "content": "3"}]}, "messages[1].role"),
        (
            {"model": "coe", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content",
        ),
    ],
)
def test_a_bad_request_is_a_400_naming_the_field(replay_url: str, body: dict, param: str) -> None:
    error = _error(httpx.post(f"{replay_url}/v1/chat/completions", json=body), 400)
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_malformed_json_unknown_models_and_paths(replay_url: str) -> None:
    response = httpx.post(
        f"{replay_url}/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    _error(response, 400)
    for model in ("gpt-4o", "coe/oracle", "coe/smart"):
        error = _error(httpx.post(f"{replay_url}/v1/chat/completions", json={"model": model, "messages": USER}), 404)
        assert error["code"] == "model_not_found" and error["param"] == "model"
    metrics = httpx.get(f"{replay_url}/metrics").text  # no series per model name a client makes up
    assert 'coe_requests_total{model="-",status="404"}' in metrics and "gpt-4o" not in metrics
    assert _error(httpx.get(f"{replay_url}/v1/nothing"), 404)["code"] == "not_found"
    assert _error(httpx.get(f"{replay_url}/v1/chat/completions"), 405)["code"] == "method_not_allowed"


def test_too_large_requests_are_413(module_settings: Settings) -> None:
    spec = CompositionSpec(pool=REF8, router="best-single", profile="priors")
    with running(spec, module_settings, max_body_bytes=4096, max_prompt_chars=500) as url:
        big = [{"role": "user", "content": "x" * 5000}]
        assert _error(httpx.post(f"{url}/v1/chat/completions", json={"model": "coe", "messages": big}), 413)
        chunked = httpx.post(
            f"{url}/v1/chat/completions", content=iter([b'{"model": "coe", "messages": "', b"x" * 5000])
        )
        assert _error(chunked, 413)["code"] == "request_too_large"
        long = [{"role": "user", "content": "y" * 1000}]
        error = _error(httpx.post(f"{url}/v1/chat/completions", json={"model": "coe", "messages": long}), 413)
        assert error["param"] == "messages"


def test_a_bug_is_a_500_in_openai_format_and_in_the_log(
    module_settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The direct chat path runs outside FastAPI's error handlers: it answers an unexpected error itself."""

    def broken(messages: list) -> str:
        raise RuntimeError("a bug in deciding")

    monkeypatch.setattr("coe.service.gateway.question_text", broken)
    spec = CompositionSpec(pool=REF8, router="best-single", profile="priors")
    with running(spec, module_settings) as url:
        response = httpx.post(f"{url}/v1/chat/completions", json={"model": "coe", "messages": USER})
        metrics = httpx.get(f"{url}/metrics").text
    error = _error(response, 500)
    assert error["type"] == "server_error" and "a bug" not in error["message"]
    assert 'coe_requests_total{model="coe",status="500"} 1.0' in metrics
    assert any("a bug in deciding" in record.getMessage() for record in caplog.records)


def test_no_recorded_answer_anywhere_is_a_503(replay_url: str) -> None:
    error = _error(httpx.post(f"{replay_url}/v1/chat/completions", json={"model": "coe", "messages": USER}), 503)
    assert error["code"] == "no_expert_available" and "no recorded response" in error["message"]


def test_a_full_queue_answers_429_with_retry_after(
    tmp_path: Path, module_settings: Settings, upstream: Upstream
) -> None:
    pool = upstream_pool(tmp_path, upstream, {"slow": 0.9})
    spec = CompositionSpec.model_validate({"pool": pool, "router": "best-single", "profile": "priors"})
    with running(spec, module_settings, max_queue=1, max_batch=1) as url:
        results: list[httpx.Response] = []

        def ask() -> None:
            results.append(
                httpx.post(f"{url}/v1/chat/completions", json={"model": "coe", "messages": USER}, timeout=30)
            )

        threads = [threading.Thread(target=ask) for _ in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    statuses = sorted(r.status_code for r in results)
    assert statuses.count(200) >= 2 and 429 in statuses
    refused = next(r for r in results if r.status_code == 429)
    assert _error(refused, 429)["code"] == "queue_full" and int(refused.headers["retry-after"]) >= 1


def test_a_request_past_its_deadline_is_a_504(tmp_path: Path, module_settings: Settings, upstream: Upstream) -> None:
    pool = upstream_pool(tmp_path, upstream, {"slow": 0.9})
    spec = CompositionSpec.model_validate({"pool": pool, "router": "best-single", "profile": "priors"})
    with running(spec, module_settings, request_timeout_s=0.5) as url:
        error = _error(httpx.post(f"{url}/v1/chat/completions", json={"model": "coe", "messages": USER}), 504)
    assert error["type"] == "timeout"


def test_a_non_loopback_service_refuses_to_start_without_keys(module_settings: Settings) -> None:
    from coe.errors import ConfigError
    from coe.service import ServiceConfig, create_app

    spec = CompositionSpec(pool=REF8, router="best-single", profile="priors")
    with pytest.raises(ConfigError, match="needs API keys: create one with `coe keys create NAME`"):
        create_app(ServiceConfig(composition=spec, host="0.0.0.0"), settings=module_settings)


def test_the_direct_path_and_the_route_answer_alike(replay_url: str, mmlu_test: list) -> None:
    """A JSON body, whole or in chunks, goes straight to the handler (DirectChat); a `+json` type and
    no content type take the FastAPI route: the same answer, the same refusals."""
    query = mmlu_test[0]
    body = {"model": "coe", "messages": [{"role": "user", "content": query.text}]}
    body["coe"] = {"query_id": query.id, "choices": list(query.choices)}
    url = f"{replay_url}/v1/chat/completions"

    def chunks() -> Iterator[bytes]:
        encoded = json.dumps(body).encode()
        yield encoded[:10]
        yield encoded[10:]

    answers = [
        httpx.post(url, json=body),
        httpx.post(url, content=json.dumps(body), headers={"content-type": "application/json; charset=utf-8"}),
        httpx.post(url, content=json.dumps(body), headers={"content-type": "application/vnd.coe+json"}),
        httpx.post(url, content=chunks(), headers={"content-type": "application/json"}),
    ]
    for response in answers:
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
    picked = {(r.json()["coe"]["choice"], r.headers["x-coe-experts"]) for r in answers}
    assert len(picked) == 1 and next(iter(picked))[0] in "ABCDEFGHIJ"
    untyped = httpx.post(url, content=json.dumps(body), headers={"content-type": ""})
    assert _error(untyped, 400)["param"] is None
    wrong = {**body, "messages": [{"role": "robot", "content": "hi"}]}
    for content_type in ("application/json", "application/vnd.coe+json"):
        refused = httpx.post(url, content=json.dumps(wrong), headers={"content-type": content_type})
        assert _error(refused, 400)["param"] == "messages[0].role"


def test_a_question_the_compositions_cost_cap_admits_no_expert_for_is_refused_alone(
    module_settings: Settings, mmlu_test: list
) -> None:
    """Both requests would share one batch (the window); the one no expert fits is refused at the door,
    not by the Composer with its batch."""
    spec = CompositionSpec(pool=REF8, router="knn", profile="priors", k=3, aggregator="weighted", max_cost_usd=0.001)
    question = mmlu_test[0]
    fits = {
        "model": "coe",
        "messages": [{"role": "user", "content": question.text}],
        "coe": {"query_id": question.id, "choices": list(question.choices)},
    }
    too_long = {"model": "coe", "messages": [{"role": "user", "content": "word " * 30_000}]}  # ~37,500 tokens
    with running(spec, module_settings, batch_window_s=0.5) as url, ThreadPoolExecutor() as clients:
        asked = [
            clients.submit(httpx.post, f"{url}/v1/chat/completions", json=body, timeout=60) for body in (fits, too_long)
        ]
        answered, refused = (future.result() for future in asked)
    assert answered.status_code == 200, answered.text
    assert answered.json()["coe"]["route"]["experts"]  # the experts within the cap
    error = _error(refused, 400)
    assert error["param"] == "max_tokens" and "admits no expert" in error["message"]
