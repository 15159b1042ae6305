"""schemathesis over the service's OpenAPI document (bounded examples, valid and invalid requests): no
server error, and every 4xx in OpenAI's error format. The experts answer from a real upstream HTTP
server, so valid requests are answered for real and fast."""

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation import GenerationMode

from coe.compose import CompositionSpec
from coe.settings import Settings
from tests.service.conftest import running, upstream_pool
from tests.upstream import Upstream


@pytest.fixture(scope="module")
def api(module_settings: Settings, upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    pool = upstream_pool(tmp_path_factory.mktemp("schema"), upstream, {"ok": 0.9, "once": 0.5})
    spec = CompositionSpec.model_validate({"pool": pool, "router": "knn", "profile": "priors", "k": 1})
    with running(spec, module_settings, max_tokens_limit=64, max_body_bytes=65536) as url:
        yield schemathesis.openapi.from_url(f"{url}/openapi.json")


def check(response: schemathesis.Response) -> None:
    """No server error; a refusal is OpenAI's error object; never a traceback."""
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"] and error["type"]
    assert "Traceback" not in response.text


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_no_server_error_and_every_refusal_in_openai_format(api, mode: GenerationMode) -> None:
    operations = [result.ok() for result in api.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/models", "/v1/route", "/healthz", "/readyz"}
    for operation in operations:
        if mode is GenerationMode.NEGATIVE and not len(operation.body):
            continue  # a path string or no parameter at all cannot be made invalid

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=20, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def call(case: schemathesis.Case) -> None:
            check(case.call(timeout=30))

        call()
