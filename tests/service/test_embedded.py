"""The service on the embedded pool (real GGUF models on the CPU): a short live question, streamed token
by token, and 32 concurrent requests that load each model once and answer as one at a time would."""

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from openai import OpenAI

from coe.compose import CompositionSpec
from coe.settings import Settings
from tests.conftest import EMBEDDED_POOL
from tests.service.conftest import running

QUESTIONS = [
    "What is the capital of France?",
    "Name a primary colour.",
    "What is 2 + 3?",
    "Which animal barks?",
    "What colour is the sky?",
    "Name a fruit.",
    "How many legs has a cat?",
    "What is ice made of?",
]


def _spec(router: str) -> CompositionSpec:
    return CompositionSpec.model_validate(
        {"pool": str(EMBEDDED_POOL), "router": router, "profile": "priors", "generation": {"max_tokens": 6}}
    )


def test_a_live_question_streams_token_by_token_as_it_answers_whole(module_settings: Settings) -> None:
    with running(_spec("best-single"), module_settings) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        messages = [{"role": "user", "content": QUESTIONS[0]}]
        whole = client.chat.completions.create(model="coe", messages=messages)
        chunks = list(client.chat.completions.create(model="coe", messages=messages, stream=True))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 3  # one chunk per token, not the answer at once
    assert "".join(pieces) == whole.choices[0].message.content
    assert whole.model_extra["coe"]["experts"][0]["expert"] == "smollm2-135m"
    assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == 6


@pytest.mark.slow
def test_concurrent_requests_load_each_model_once_and_answer_as_one_at_a_time(module_settings: Settings) -> None:
    with running(_spec("all"), module_settings) as url:

        def ask(question: str) -> dict:
            body = {"model": "coe", "messages": [{"role": "user", "content": question}]}
            response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300)
            assert response.status_code == 200, response.text
            return {a["expert"]: a["text"] for a in response.json()["coe"]["experts"]}

        one_at_a_time = {question: ask(question) for question in QUESTIONS}
        with ThreadPoolExecutor(max_workers=32) as clients:
            together = list(clients.map(ask, QUESTIONS * 4))
        metrics = httpx.get(f"{url}/metrics").text
    assert together == [one_at_a_time[q] for q in QUESTIONS * 4]
    assert all(set(texts) == {"smollm2-135m", "gemma3-270m"} for texts in together)
    assert "coe_model_loads_total 2.0" in metrics  # the two base models, each loaded once
    batches = [line for line in metrics.splitlines() if line.startswith("coe_batch_size_count")]
    assert float(batches[0].split()[-1]) < 8 + 32  # concurrent requests shared batches
