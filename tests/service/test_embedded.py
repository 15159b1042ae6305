"""The service on the embedded pool (real GGUF models on the CPU): short live questions through the
openai client (sync, streamed token by token, async) and litellm, and 32 concurrent requests that load
each model once and answer as one at a time would."""

import asyncio
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from openai import AsyncOpenAI, OpenAI

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


def test_live_questions_through_every_client_stream_token_by_token_and_agree(module_settings: Settings) -> None:
    import litellm  # imported here, like in test_clients: importing it at collection trips a pydantic warning

    with running(_spec("best-single"), module_settings, composer="process") as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        messages = [{"role": "user", "content": QUESTIONS[0]}]
        whole = client.chat.completions.create(model="coe", messages=messages)
        chunks = list(client.chat.completions.create(model="coe", messages=messages, stream=True))

        async def ask_together() -> list:
            together = AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
            asked = [{"role": "user", "content": question} for question in QUESTIONS[:2]]
            return await asyncio.gather(*(together.chat.completions.create(model="coe", messages=[m]) for m in asked))

        in_async = asyncio.run(ask_together())
        via_litellm = litellm.completion(
            model="openai/coe", api_base=f"{url}/v1", api_key="unused", messages=messages, num_retries=0
        )
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 3  # one chunk per token, not the answer at once
    answer = whole.choices[0].message.content
    assert "".join(pieces) == answer and in_async[0].choices[0].message.content == answer
    assert via_litellm.choices[0].message.content == answer
    assert in_async[1].choices[0].message.content and in_async[1].choices[0].message.content != answer
    assert whole.model_extra["coe"]["experts"][0]["expert"] == "smollm2-135m"
    assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == 6


@pytest.mark.slow
def test_concurrent_requests_load_each_model_once_and_answer_as_one_at_a_time(module_settings: Settings) -> None:
    with running(_spec("all"), module_settings, composer="process") as url:

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
