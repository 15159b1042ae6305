"""Fault injection: experts served by a misbehaving upstream HTTP server (always failing, failing 30% of
calls, timing out, refusing connections, breaking mid-stream). No request is lost: the backend retries
(one layer), the Composer replaces, the cool-down routes around a failing expert, responses and metrics
say so."""

import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from coe.compose import CompositionSpec
from coe.settings import Settings
from tests.service.conftest import running, upstream_pool
from tests.upstream import ANSWER, Upstream


def _spec(pool: str, router: str = "best-single") -> CompositionSpec:
    return CompositionSpec.model_validate({"pool": pool, "router": router, "profile": "priors", "k": 1})


def _ask(url: str, text: str, **body) -> httpx.Response:
    payload = {"model": "coe", "messages": [{"role": "user", "content": text}], **body}
    return httpx.post(f"{url}/v1/chat/completions", json=payload, timeout=60)


def _metric(url: str, name: str, **labels: str) -> float:
    """One sample of the service's Prometheus metrics (0 when absent)."""
    text = httpx.get(f"{url}/metrics").text
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if match and ",".join(sorted((match.group(1) or "").split(","))) == wanted:
            return float(match.group(2))
    return 0.0


def test_an_expert_failing_every_call_is_replaced_then_cooled_down(
    tmp_path: Path, module_settings: Settings, upstream: Upstream
) -> None:
    pool = upstream_pool(tmp_path, upstream, {"down": 0.9, "ok": 0.5})
    before = upstream.calls["down"]
    with running(_spec(pool), module_settings, composer="process", cooldown_after=3, cooldown_s=60) as url:
        responses = [_ask(url, f"question {i}") for i in range(8)]
        assert [r.status_code for r in responses] == [200] * 8
        fallbacks = [r.json()["coe"]["fallbacks"] for r in responses]
        assert all(r.json()["choices"][0]["message"]["content"] == ANSWER for r in responses)
        assert [f[0]["expert"] for f in fallbacks] == ["down"] * 8
        assert [f[0]["replacement"] for f in fallbacks] == ["ok"] * 8
        assert [f[0]["kind"] for f in fallbacks] == ["server"] * 3 + ["unavailable"] * 5
        assert "cooling down" in fallbacks[-1][0]["message"]
        assert upstream.calls["down"] - before == 3 * 2  # three requests, each a call and its retry
        assert _metric(url, "coe_fallbacks_total", expert="down", kind="server") == 3
        assert _metric(url, "coe_fallbacks_total", expert="down", kind="unavailable") == 5
        assert _metric(url, "coe_experts_cooling") == 1
        assert _metric(url, "coe_expert_calls_total", expert="down", outcome="error") == 3
        assert _metric(url, "coe_requests_total", model="coe", status="200") == 8


def test_an_expert_failing_30_percent_of_calls_loses_no_request(
    tmp_path: Path, module_settings: Settings, upstream: Upstream
) -> None:
    pool = upstream_pool(tmp_path, upstream, {"flaky": 0.9, "ok": 0.5}, num_retries=0)  # every failure shows
    failures_before = upstream.failures["flaky"]
    with running(_spec(pool), module_settings, cooldown_after=0) as url:
        with ThreadPoolExecutor(max_workers=8) as clients:
            responses = list(clients.map(lambda i: _ask(url, f"flaky question {i}"), range(40)))
        assert [r.status_code for r in responses] == [200] * 40
        replaced = [r for r in responses if r.json()["coe"]["fallbacks"]]
        for response in replaced:
            (fallback,) = response.json()["coe"]["fallbacks"]
            assert (fallback["expert"], fallback["replacement"], fallback["kind"]) == ("flaky", "ok", "server")
            assert response.headers["x-coe-experts"] == "ok"
        assert upstream.failures["flaky"] - failures_before == len(replaced) >= 5  # about 30% of 40 calls
        assert _metric(url, "coe_fallbacks_total", expert="flaky", kind="server") == len(replaced)
        assert _metric(url, "coe_expert_calls_total", expert="flaky", outcome="error") == len(replaced)
        assert _metric(url, "coe_expert_calls_total", expert="flaky", outcome="ok") == 40 - len(replaced)


def test_timeouts_refused_connections_and_bad_output_fall_back(
    tmp_path: Path, module_settings: Settings, upstream: Upstream
) -> None:
    refused = {
        "id": "refused",
        "base": "nowhere",
        "skills": {"overall": 0.99},
        "backend": {
            "kind": "litellm",
            "model": "openai/x",
            "api_base": "http://127.0.0.1:9/v1",
            "api_key_env": "LOCAL_KEY",
            "num_retries": 0,
        },
    }
    pool = upstream_pool(tmp_path, upstream, {"slow": 0.95, "garbage": 0.9, "ok": 0.1}, extra=(refused,), timeout_s=0.5)
    with running(_spec(pool, router="knn"), module_settings, cooldown_after=0) as url:
        response = _ask(url, "anyone?", coe={"k": 1})
    assert response.status_code == 200
    fallbacks = response.json()["coe"]["fallbacks"]
    assert [(f["expert"], f["kind"]) for f in fallbacks] == [
        ("refused", "connection"),
        ("slow", "timeout"),
        ("garbage", "server"),  # litellm reports a body that is not JSON as a server error
    ]
    assert [f["replacement"] for f in fallbacks] == ["slow", "garbage", "ok"]
    assert response.json()["choices"][0]["message"]["content"] == ANSWER


def test_every_expert_timing_out_is_a_504(tmp_path: Path, module_settings: Settings, upstream: Upstream) -> None:
    pool = upstream_pool(tmp_path, upstream, {"slow": 0.9}, timeout_s=0.3)
    with running(_spec(pool), module_settings) as url:
        response = _ask(url, "too slow")
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "expert_timeout"


def test_a_streamed_expert_that_fails_before_its_first_token_is_replaced(
    tmp_path: Path, module_settings: Settings, upstream: Upstream
) -> None:
    pool = upstream_pool(tmp_path, upstream, {"down": 0.9, "ok": 0.5})
    with running(_spec(pool), module_settings, cooldown_after=0) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        chunks = list(
            client.chat.completions.create(model="coe", messages=[{"role": "user", "content": "hi"}], stream=True)
        )
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == ANSWER
    (fallback,) = chunks[-1].model_extra["coe"]["fallbacks"]
    assert (fallback["expert"], fallback["replacement"]) == ("down", "ok")


def test_a_failure_mid_stream_ends_with_an_error_event(
    tmp_path: Path, module_settings: Settings, upstream: Upstream
) -> None:
    pool = upstream_pool(tmp_path, upstream, {"cut": 0.9, "ok": 0.5})
    with running(_spec(pool), module_settings, cooldown_after=0) as url:
        with httpx.stream(
            "POST",
            f"{url}/v1/chat/completions",
            json={"model": "coe", "stream": True, "messages": [{"role": "user", "content": "go"}]},
            timeout=60,
        ) as response:
            events = [json.loads(line.removeprefix("data: ")) for line in response.iter_lines() if line]
        assert [e["choices"][0]["delta"].get("content") for e in events[1:3]] == ["The", " answer"]
        assert "error" in events[-1] and events[-1]["error"]["type"] == "service_unavailable"
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.APIError):
            list(client.chat.completions.create(model="coe", messages=[{"role": "user", "content": "go"}], stream=True))
