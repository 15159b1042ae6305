"""Real clients against a real service: the official `openai` client (sync, async, streaming) and
litellm, on the recorded reference pool; answers equal the in-process Composer's."""

import asyncio
import json

import httpx
import pytest
from openai import AsyncOpenAI, OpenAI

from coe.compose import CompositionSpec, compose
from coe.schema import Query
from coe.service.compositions import SERVED_ROUTERS
from coe.settings import Settings
from tests.conftest import DATA_DIR
from tests.service.conftest import REF8, running, upstream_pool
from tests.upstream import ANSWER, Upstream, litellm_expert


@pytest.fixture(scope="module")
def questions(mmlu_test: list[Query]) -> list[Query]:
    """Test questions every recorded expert answered (a few items lack some experts' records)."""
    from coe.backends import ReplayBackend
    from coe.registry import Registry

    registry = Registry.from_file(REF8, DATA_DIR)
    backend = ReplayBackend()
    tables = [backend.responses(expert) for expert in registry.experts]
    return [q for q in mmlu_test[:200] if all(q.id in table for table in tables)][:12]


@pytest.fixture(scope="module")
def in_process(module_settings: Settings, questions: list[Query]) -> dict:
    """The same composition's answers, computed in-process."""
    spec = CompositionSpec(pool=REF8, router="knn", profile="priors", k=3, aggregator="weighted")
    with compose(spec, settings=module_settings) as composer:
        asked = [Query(id=q.id, text=q.text, choices=q.choices) for q in questions]
        return {answer.query_id: answer for answer in composer.ask_batch(asked)}


def _extra(question: Query) -> dict:
    return {"coe": {"query_id": question.id, "choices": list(question.choices or ())}}


def test_the_openai_client_gets_the_composed_answer(replay_url: str, questions: list[Query], in_process: dict) -> None:
    client = OpenAI(base_url=f"{replay_url}/v1", api_key="unused", max_retries=0)
    question = questions[0]
    raw = client.chat.completions.with_raw_response.create(
        model="coe", messages=[{"role": "user", "content": question.text}], extra_body=_extra(question)
    )
    completion = raw.parse()
    expected = in_process[question.id]
    assert completion.object == "chat.completion" and completion.model == "coe"
    assert completion.choices[0].message.content == expected.answer
    assert completion.choices[0].finish_reason == "stop"
    coe = completion.model_extra["coe"]
    assert coe["choice"] == expected.choice and coe["votes"] == pytest.approx(expected.votes)
    assert [e["expert"] for e in coe["route"]["experts"]] == list(expected.experts)
    assert len(coe["route"]["fallbacks"]) == 5 and coe["route"]["reason"] == expected.route.reason
    assert [e["text"] for e in coe["experts"]] == [a.text for a in expected.expert_answers]
    assert coe["aggregator"] == "weighted" and coe["fallbacks"] == []
    assert set(coe["timings"]) >= {"route_s", "generate_s", "fuse_s", "queue_s", "overhead_s", "request_s"}
    assert raw.headers["x-coe-router"] == "knn"
    assert raw.headers["x-coe-experts"] == ",".join(expected.experts)
    assert float(raw.headers["x-coe-overhead-ms"]) >= 0


def test_the_async_client_gets_each_answer_under_concurrency(
    replay_url: str, questions: list[Query], in_process: dict
) -> None:
    async def ask_all() -> list:
        client = AsyncOpenAI(base_url=f"{replay_url}/v1", api_key="unused", max_retries=0)
        calls = [
            client.chat.completions.create(
                model="coe", messages=[{"role": "user", "content": q.text}], extra_body=_extra(q)
            )
            for q in questions
        ]
        return await asyncio.gather(*calls)

    completions = asyncio.run(ask_all())
    for question, completion in zip(questions, completions, strict=True):
        assert completion.choices[0].message.content == in_process[question.id].answer
        assert completion.model_extra["coe"]["choice"] == in_process[question.id].choice


def test_streaming_sends_the_answer_in_openai_chunks(replay_url: str, questions: list[Query]) -> None:
    client = OpenAI(base_url=f"{replay_url}/v1", api_key="unused", max_retries=0)
    question = questions[1]
    stream = client.chat.completions.create(
        model="coe/best-single",
        messages=[{"role": "user", "content": question.text}],
        extra_body=_extra(question),
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == ["stop"]
    coe = finals[0].model_extra["coe"]
    assert coe["router"] == "best-single" and text == coe["experts"][0]["text"] and text
    assert chunks[-1].usage is not None and chunks[-1].choices == []


def test_a_streaming_backend_streams_token_by_token(module_settings: Settings, upstream: Upstream, tmp_path) -> None:
    """The upstream streams word by word; the service relays each piece as its own chunk."""
    pool = upstream_pool(tmp_path, upstream, {"ok": 0.9})
    request = {"model": "coe", "stream": True, "messages": [{"role": "user", "content": "Pick one."}]}
    spec = CompositionSpec(pool=pool, router="best-single", profile="priors")
    with (
        running(spec, module_settings) as url,
        httpx.stream("POST", f"{url}/v1/chat/completions", json=request, timeout=60) as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-coe-experts"] == "ok"
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    deltas = [json.loads(line.removeprefix("data: "))["choices"][0]["delta"] for line in lines[:-1]]
    pieces = [d["content"] for d in deltas if d.get("content")]
    assert pieces == ["The", " answer", " is", " (B)."] and "".join(pieces) == ANSWER


def test_the_first_piece_leaves_before_the_expert_has_finished(
    module_settings: Settings, upstream: Upstream, tmp_path
) -> None:
    """The upstream holds the rest of its answer until the test has read the first piece from the service:
    a service that waited for the whole answer would time out here."""
    pool = upstream_pool(tmp_path, upstream, {"hold": 0.9})
    request = {"model": "coe", "stream": True, "messages": [{"role": "user", "content": "Take your time."}]}
    spec = CompositionSpec(pool=pool, router="best-single", profile="priors")
    upstream.release.clear()
    with (
        running(spec, module_settings) as url,
        httpx.stream("POST", f"{url}/v1/chat/completions", json=request, timeout=10) as response,
    ):
        events = (
            json.loads(line.removeprefix("data: ")) for line in response.iter_lines() if line.startswith("data: {")
        )
        assert next(events)["choices"][0]["delta"]["role"] == "assistant"
        first = next(events)["choices"][0]["delta"]["content"]
        assert first == "The" and not upstream.release.is_set()
        upstream.release.set()
        rest = [event["choices"][0]["delta"].get("content") for event in events if event["choices"]]
    assert first + "".join(piece for piece in rest if piece) == ANSWER


def test_litellm_talks_to_the_service_as_an_openai_model(
    replay_url: str, questions: list[Query], in_process: dict
) -> None:
    import litellm

    question = questions[2]
    response = litellm.completion(
        model="openai/coe",
        api_base=f"{replay_url}/v1",
        api_key="unused",
        messages=[{"role": "user", "content": question.text}],
        extra_body=_extra(question),
        num_retries=0,
    )
    assert response.choices[0].message.content == in_process[question.id].answer


def test_models_route_health_and_metrics(replay_url: str, questions: list[Query], in_process: dict) -> None:
    client = OpenAI(base_url=f"{replay_url}/v1", api_key="unused", max_retries=0)
    names = [model.id for model in client.models.list()]
    assert names[:2] == ["coe", "coe/all"] and "coe/knn" in names and "coe/oracle" not in names
    assert "gemini-1.5-flash-002" in names and len(names) == 1 + len(SERVED_ROUTERS) + 8
    assert client.models.retrieve("coe/skill").id == "coe/skill"
    question = questions[0]
    decision = httpx.post(
        f"{replay_url}/v1/route",
        json={"messages": [{"role": "user", "content": question.text}], "coe": {"query_id": question.id}},
    ).json()
    assert [e["expert"] for e in decision["route"]["experts"]] == list(in_process[question.id].experts)
    assert httpx.get(f"{replay_url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{replay_url}/readyz").json()["status"] == "ready"
    metrics = httpx.get(f"{replay_url}/metrics").text
    assert 'coe_requests_total{model="coe",status="200"}' in metrics
    assert "coe_request_seconds_bucket" in metrics and "coe_queue_depth" in metrics


def test_every_served_router_answers(replay_url: str, questions: list[Query]) -> None:
    client = OpenAI(base_url=f"{replay_url}/v1", api_key="unused", max_retries=0)
    question = questions[6]
    for name in SERVED_ROUTERS:
        completion = client.chat.completions.create(
            model=f"coe/{name}", messages=[{"role": "user", "content": question.text}], extra_body=_extra(question)
        )
        coe = completion.model_extra["coe"]
        assert coe["router"] == name and coe["experts"] and completion.choices[0].message.content
        ranked = coe["route"]["experts"] + coe["route"]["fallbacks"]
        assert len({e["expert"] for e in ranked}) == len(ranked) == 8  # who would replace a failed pick


def test_an_expert_id_is_a_plain_proxy(replay_url: str, questions: list[Query]) -> None:
    client = OpenAI(base_url=f"{replay_url}/v1", api_key="unused", max_retries=0)
    question = questions[3]
    completion = client.chat.completions.create(
        model="gemma-7b", messages=[{"role": "user", "content": question.text}], extra_body=_extra(question)
    )
    coe = completion.model_extra["coe"]
    assert [e["expert"] for e in coe["experts"]] == ["gemma-7b"] and coe["route"]["fallbacks"] == []
    assert "the requested expert gemma-7b" in coe["route"]["reason"]


def test_per_request_options_reach_the_composition(replay_url: str, questions: list[Query]) -> None:
    client = OpenAI(base_url=f"{replay_url}/v1", api_key="unused", max_retries=0)
    question = questions[4]
    options = {
        **_extra(question)["coe"],
        "k": 2,
        "aggregator": "majority",
        "experts": ["gemma-7b", "llama-3-70b", "qwen1.5-110b"],
    }
    coe = client.chat.completions.create(
        model="coe/knn", messages=[{"role": "user", "content": question.text}], extra_body={"coe": options}
    ).model_extra["coe"]
    assert len(coe["experts"]) == 2 and {e["expert"] for e in coe["experts"]} <= set(options["experts"])
    assert coe["aggregator"] == "majority" and "restricted to 3" in coe["route"]["reason"]


def test_a_cost_budget_keeps_the_experts_that_fit_it(replay_url: str, questions: list[Query]) -> None:
    """max_cost_usd admits the experts whose worst case (a token per 4 characters of the question, plus
    max_tokens, at the expert's price, times k) fits: here the two priced under 0.20 USD per million."""
    client = OpenAI(base_url=f"{replay_url}/v1", api_key="unused", max_retries=0)
    question = questions[5]
    k, max_tokens = 2, 100
    budget = (len(question.text) / 4 + max_tokens) * 0.20 / 1e6 * k
    coe = client.chat.completions.create(
        model="coe",
        messages=[{"role": "user", "content": question.text}],
        max_tokens=max_tokens,
        extra_body={"coe": {**_extra(question)["coe"], "k": k, "max_cost_usd": budget}},
    ).model_extra["coe"]
    assert {e["expert"] for e in coe["experts"]} == {"gemma-7b", "llama-3.1-8b-instruct"}  # 0.15 and 0.18
    assert "restricted to 2" in coe["route"]["reason"] and coe["cost_usd"] <= budget


def test_free_form_answers_of_several_experts_are_synthesized(
    module_settings: Settings, upstream: Upstream, tmp_path
) -> None:
    twin = {**litellm_expert(upstream, "ok", "ok-twin"), "skills": {"overall": 0.5}}
    pool = upstream_pool(tmp_path, upstream, {"ok": 0.9}, extra=(twin,))
    spec = CompositionSpec(pool=pool, router="all", profile="priors")
    with running(spec, module_settings, synthesizer="ok") as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        before = upstream.calls["ok"]
        free = client.chat.completions.create(model="coe", messages=[{"role": "user", "content": "Tell me a fact."}])
        assert upstream.calls["ok"] - before == 3  # two experts, then the synthesis
        voted = client.chat.completions.create(
            model="coe",
            messages=[{"role": "user", "content": "Pick one."}],
            extra_body={"coe": {"choices": ["x", "y"]}},
        )
        assert upstream.calls["ok"] - before == 5  # multiple choice: the two experts vote, nothing to synthesize
    assert free.model_extra["coe"]["aggregator"] == "llm" and free.choices[0].message.content == ANSWER
    assert voted.model_extra["coe"]["aggregator"] == "majority" and voted.model_extra["coe"]["choice"] == "B"
