"""The litellm backend over real loopback HTTP: the embedded engine's own OpenAI-compatible server, and a
small one that misbehaves on purpose and records the API key each request carries."""

from collections.abc import Iterator

import pytest

from coe.backends.litellm import LitellmBackend
from coe.backends.llamacpp import LlamaCppBackend
from coe.registry import Registry
from coe.schema import ExpertSpec, LitellmBackendSpec
from coe.types import GenerationParams, Prompt
from tests.upstream import ANSWER, Upstream, litellm_expert, serve_upstream

PARAMS = GenerationParams(max_tokens=16)


@pytest.fixture(scope="module")
def served(embedded_backend: LlamaCppBackend, embedded_pool: Registry) -> ExpertSpec:
    """SmolLM2 behind llama.cpp's HTTP server on 127.0.0.1, declared as an API expert."""
    address = embedded_backend.address(embedded_pool["smollm2-135m"])
    assert address.startswith("http://127.0.0.1:")
    return ExpertSpec(
        id="smollm2-over-http",
        base="HuggingFaceTB/SmolLM2-135M-Instruct",
        backend=LitellmBackendSpec(
            model="openai/smollm2", api_base=f"{address}/v1", api_key="sk-local", max_concurrency=3
        ),
    )


def test_generates_over_http_in_input_order(
    served: ExpertSpec, embedded_backend: LlamaCppBackend, embedded_pool: Registry
) -> None:
    prompts = [
        Prompt("What is the capital of France? Answer in one word."),
        Prompt("Name a primary colour."),
        Prompt("2 + 2 ="),
    ]
    outputs = LitellmBackend().generate(served, prompts, PARAMS)
    assert [o.error for o in outputs] == [None, None, None]
    assert "Paris" in outputs[0].text
    assert all(o.n_prompt_tokens > 0 and o.n_completion_tokens > 0 for o in outputs)
    in_process = embedded_backend.generate(embedded_pool["smollm2-135m"], prompts, PARAMS)
    assert [o.text for o in outputs] == [o.text for o in in_process]


def test_loads_are_free(served: ExpertSpec) -> None:
    backend = LitellmBackend()
    assert backend.load(served).loaded is False
    assert backend.is_loaded(served)


def test_unreachable_server_fails_each_request_with_a_retryable_coe_error() -> None:
    dead = ExpertSpec(
        id="dead",
        base="none",
        backend=LitellmBackendSpec(
            model="openai/none", api_base="http://127.0.0.1:9/v1", api_key="x", num_retries=0, timeout_s=5
        ),
    )
    outputs = LitellmBackend().generate(dead, [Prompt("hi"), Prompt("there")], PARAMS)
    assert len(outputs) == 2
    for output in outputs:
        assert output.text == ""
        assert output.error is not None
        assert output.error.message.startswith("expert 'dead': connection error: ")
        assert "Connection error" in output.error.message and "HTTP" not in output.error.message
        assert output.error.message.endswith("retrying may help")
        assert (output.error.kind, output.error.retryable, output.error.expert) == ("connection", True, "dead")


def test_a_bad_request_fails_alone_and_is_not_retryable(served: ExpertSpec) -> None:
    outputs = LitellmBackend().generate(served, [Prompt("word " * 9000), Prompt("Hi")], PARAMS)
    assert outputs[0].error is not None
    assert "HTTP 400" in outputs[0].error.message and "context" in outputs[0].error.message
    assert "retrying may help" not in outputs[0].error.message
    assert outputs[0].error.kind in ("bad_request", "too_long") and not outputs[0].error.retryable
    assert outputs[1].ok and outputs[1].text


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with serve_upstream() as server:
        yield server


def api_expert(upstream: Upstream, model: str, num_retries: int, **backend: str | None) -> ExpertSpec:
    return ExpertSpec.model_validate(litellm_expert(upstream, model, "flaky-api", num_retries=num_retries, **backend))


def test_api_key_env_is_read_at_call_time(upstream: Upstream, monkeypatch: pytest.MonkeyPatch) -> None:
    expert, backend = api_expert(upstream, "ok", 0, api_key_env="COE_TEST_API_KEY"), LitellmBackend()
    monkeypatch.delenv("COE_TEST_API_KEY", raising=False)
    upstream.keys.clear()
    [missing] = backend.generate(expert, [Prompt("hi")], PARAMS)
    assert missing.error is not None and missing.error.kind == "auth" and not missing.error.retryable
    assert "COE_TEST_API_KEY" in str(missing.error) and "not set" in str(missing.error)
    monkeypatch.setenv("COE_TEST_API_KEY", "sk-first-0000000001")
    assert backend.generate(expert, [Prompt("hi")], PARAMS)[0].text == ANSWER
    monkeypatch.setenv("COE_TEST_API_KEY", "sk-rotated-0000000002")
    assert backend.generate(expert, [Prompt("hi")], PARAMS)[0].text == ANSWER
    assert upstream.keys == ["Bearer sk-first-0000000001", "Bearer sk-rotated-0000000002"]


def test_a_masked_key_read_back_from_the_database_fails_without_a_call(upstream: Upstream) -> None:
    literal = api_expert(upstream, "ok", 0, api_key_env=None, api_key="sk-literal-0000000123")
    stored = ExpertSpec.model_validate_json(literal.model_dump_json())
    assert "sk-…123" in stored.model_dump_json() and "literal" not in stored.model_dump_json()
    upstream.keys.clear()
    [output] = LitellmBackend().generate(stored, [Prompt("hi")], PARAMS)
    assert output.error is not None and output.error.kind == "auth"
    assert "masked" in str(output.error) and "api_key_env" in str(output.error)
    assert upstream.keys == []
    assert LitellmBackend().generate(literal, [Prompt("hi")], PARAMS)[0].text == ANSWER  # in memory: still usable
    assert upstream.keys == ["Bearer sk-literal-0000000123"]


def test_retries_happen_in_one_layer_with_backoff(upstream: Upstream, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("coe.backends.litellm.RETRY_BASE_S", 0.01)
    before = upstream.calls["down"]
    (output,) = LitellmBackend().generate(api_expert(upstream, "down", 2), [Prompt("hi")], PARAMS)
    assert upstream.calls["down"] - before == 3  # the first call and num_retries=2 more: no hidden layers
    assert output.error is not None and (output.error.kind, output.error.retryable) == ("server", True)


def test_a_reply_without_content_is_a_failure_not_an_empty_answer(upstream: Upstream) -> None:
    (output,) = LitellmBackend().generate(api_expert(upstream, "null", 2), [Prompt("hi")], PARAMS)
    assert output.error is not None and output.error.kind == "bad_output" and not output.ok
    assert "content: null" in output.error.message


def test_a_stream_hands_each_piece_on_and_retries_only_before_the_first(
    upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("coe.backends.litellm.RETRY_BASE_S", 0.01)
    pieces: list[str] = []
    whole = LitellmBackend().stream(api_expert(upstream, "ok", 2), Prompt("hi"), PARAMS, pieces.append)
    assert pieces == ["The", " answer", " is", " (B)."] and whole.text == ANSWER and whole.ok
    assert whole.n_completion_tokens == 6
    before = upstream.calls["cut"]
    pieces.clear()
    broken = LitellmBackend().stream(api_expert(upstream, "cut", 2), Prompt("hi"), PARAMS, pieces.append)
    assert upstream.calls["cut"] - before == 1  # text already went out: no retry
    assert broken.text == "The answer" and pieces == ["The", " answer"] and broken.error is not None
