"""API keys: `coe keys create|list|revoke` as users run them, 401 without a valid key, a per-key rate,
keys stored hashed; neither keys nor prompts reach logs or the request log (unless --log-prompts)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from coe.compose import CompositionSpec
from coe.errors import ConfigError
from coe.schema import Query
from coe.settings import Settings
from coe.store import KeyStore, RequestLog, Store, hash_key
from tests.conftest import REPO
from tests.service.conftest import REF8, running

SECRET_QUESTION = "What is the secret plan of the purple walrus?"


def coe(*args: str, settings: Settings) -> str:
    env = {**os.environ, "COE_DATABASE_URL": settings.database_url, "COE_CACHE_DIR": str(settings.cache_dir)}
    command = [sys.executable, "-c", "from coe.cli import main; main()", *args]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def settings(tmp_path: Path, weights_cache: Path) -> Settings:
    from tests.conftest import DATA_DIR

    return Settings(cache_dir=weights_cache, database_url=f"sqlite:///{tmp_path / 'coe.db'}", data_dir=DATA_DIR)


SPEC = CompositionSpec(pool=REF8, router="best-single", profile="priors")


def _chat(url: str, key: str | None, question: Query | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    text, options = (question.text, {"query_id": question.id}) if question else (SECRET_QUESTION, {})
    body = {"model": "coe", "messages": [{"role": "user", "content": text}], "coe": options}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=30)


def test_keys_are_created_once_listed_revoked_and_stored_hashed(
    settings: Settings, mmlu_test: list[Query], capfd: pytest.CaptureFixture[str]
) -> None:
    key = coe("keys", "create", "team", settings=settings).splitlines()[0].strip()
    assert key.startswith("coe-") and len(key) > 40
    listing = coe("keys", "list", settings=settings)
    assert "team" in listing and key[:8] in listing and key not in listing
    database = Path(settings.database_url.removeprefix("sqlite:///"))
    assert key.encode() not in database.read_bytes() and key[8:].encode() not in database.read_bytes()

    with running(SPEC, settings, key_refresh_s=0.1, uvicorn_options={"log_level": "debug"}) as url:
        for presented in (None, "coe-wrong", key + "x"):
            response = _chat(url, presented)
            assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(f"{url}/v1/models").status_code == 401
        assert httpx.get(f"{url}/v1/models", headers={"authorization": f"Bearer {key}"}).status_code == 200
        assert _chat(url, key, mmlu_test[0]).status_code == 200
        assert _chat(url, key).status_code == 503  # no recorded answer: authenticated, then refused
        assert httpx.get(f"{url}/healthz").status_code == 200  # probes need no key
        coe("keys", "revoke", "team", settings=settings)
        deadline = time.monotonic() + 10
        while _chat(url, key, mmlu_test[0]).status_code != 401:
            assert time.monotonic() < deadline, "a revoked key still works"
            time.sleep(0.1)
    (stored,) = KeyStore(Store(settings.database_url)).all()
    assert stored.name == "team" and not stored.active
    logged = capfd.readouterr()
    assert key not in logged.out + logged.err and SECRET_QUESTION not in logged.out + logged.err
    assert "POST /v1/chat/completions" in logged.out + logged.err  # uvicorn's access log ran (debug level)
    served = RequestLog(Store(settings.database_url)).since()
    assert {r.status for r in served} == {200, 401, 503}
    assert {r.key_name for r in served if r.status in (200, 503)} == {"team"}
    assert all(r.prompt is None for r in served)


def test_log_prompts_keeps_the_question_in_the_request_log(settings: Settings) -> None:
    with running(SPEC, settings, log_prompts=True) as url:
        assert _chat(url, None).status_code == 503
    (served,) = RequestLog(Store(settings.database_url)).since()
    assert served.prompt == SECRET_QUESTION and served.error_kind == "no_expert_available"


def test_a_key_with_a_rate_limit_gets_429_past_it(settings: Settings) -> None:
    key = KeyStore(Store(settings.database_url)).create("burst", rate_limit_per_min=2)
    with running(SPEC, settings) as url:
        statuses = [httpx.get(f"{url}/v1/models", headers={"authorization": f"Bearer {key}"}) for _ in range(3)]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    assert statuses[2].json()["error"]["code"] == "rate_limit_exceeded" and int(statuses[2].headers["retry-after"]) >= 1


def test_keys_on_sqlite_and_postgresql(database_url: str) -> None:
    keys = KeyStore(Store(database_url))
    key = keys.create("team", rate_limit_per_min=5)
    with pytest.raises(ConfigError, match="a key named 'team' exists"):
        keys.create("team")  # INSERT ... ON CONFLICT: a second writer of the name is told, not crashed
    assert keys.by_hash()[hash_key(key)].name == "team"
    keys.revoke("team")
    (stored,) = keys.all()
    assert not stored.active and stored.rate_limit_per_min == 5
    with pytest.raises(ConfigError, match="no key named 'nobody'; known: team"):
        keys.revoke("nobody")
