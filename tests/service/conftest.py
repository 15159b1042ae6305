"""Services for the tests: a real uvicorn on a free loopback port, on the recorded reference pool (most
tests), on experts served by a misbehaving upstream HTTP server (faults), or on the embedded pool."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from coe.compose import CompositionBuilder, CompositionSpec
from coe.datasets import load_mmlu_pro
from coe.schema import Query
from coe.service import ServiceConfig, create_app
from coe.service.config import ComposerKind
from coe.settings import Settings
from tests.conftest import DATA_DIR, REPO
from tests.service.server import serve_in_thread
from tests.upstream import Upstream, litellm_expert, serve_upstream

REF8 = str(REPO / "registry" / "replay-mmlu-pro-ref8.yaml")

Serve = Callable[..., AbstractContextManager[str]]


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The litellm backend's retries (the one retry layer) back off 10 ms, not 0.5 s, in these tests."""
    monkeypatch.setattr("coe.backends.litellm.RETRY_BASE_S", 0.01)


@pytest.fixture(scope="module")
def module_settings(tmp_path_factory: pytest.TempPathFactory, weights_cache: Path) -> Settings:
    folder = tmp_path_factory.mktemp("service")
    return Settings(cache_dir=weights_cache, database_url=f"sqlite:///{folder / 'coe.db'}", data_dir=DATA_DIR)


@pytest.fixture(scope="session")
def mmlu_test() -> list[Query]:
    """MMLU-Pro test questions, with their ids: the replay experts answer them by id."""
    return load_mmlu_pro("test", DATA_DIR)


@contextmanager
def running(
    spec: CompositionSpec,
    settings: Settings,
    builder: CompositionBuilder | None = None,
    uvicorn_options: dict[str, Any] | None = None,
    composer: ComposerKind = "thread",
    **config: Any,
) -> Iterator[str]:
    """The service's base URL while a real uvicorn serves `spec`. Its batches are composed on a thread,
    which starts in 0.05 s against 1.5–2 s for a process; `coe serve`'s default, a composing process, is
    what the replay pool's service, the embedded pool's, the composing tests and a fault test run."""
    app = create_app(ServiceConfig(composition=spec, composer=composer, **config), settings=settings, builder=builder)
    with serve_in_thread(app, **(uvicorn_options or {})) as url:
        yield url


@pytest.fixture(scope="module")
def replay_url(module_settings: Settings) -> Iterator[str]:
    """The reference pool (8 recorded experts) behind knn on declared priors, k = 3, weighted vote."""
    spec = CompositionSpec(pool=REF8, router="knn", profile="priors", k=3, aggregator="weighted")
    with running(spec, module_settings, composer="process") as url:
        yield url


@pytest.fixture(scope="session")
def upstream() -> Iterator[Upstream]:
    with serve_upstream() as server:
        yield server


def upstream_pool(
    folder: Path, upstream: Upstream, models: dict[str, float], *, extra: tuple[dict, ...] = (), **backend: Any
) -> str:
    """A registry file of experts served by the upstream as `model`, with declared priors (their rank);
    `backend` settings apply to each, `extra` experts are added as given."""
    experts = [
        {**litellm_expert(upstream, model, **backend), "skills": {"overall": prior}} for model, prior in models.items()
    ]
    experts.extend(extra)
    path = folder / "upstream.yaml"
    path.write_text(yaml.safe_dump({"experts": experts}))
    return str(path)
