"""Where things are. Entry points (CLI, service, UI) build `Settings` once and pass values down;
library code takes explicit arguments and never reads the environment itself."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path | None:
    """`../shared/data` beside the working directory or beside a checkout of coe."""
    checkout = Path(__file__).resolve().parents[1]
    for candidate in (Path.cwd() / "../shared/data", checkout / "../shared/data"):
        if candidate.is_dir():
            return candidate.resolve()
    return None


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "coe"


class Settings(BaseSettings):
    """All settings, read from `COE_*` environment variables (nested with `__`) or given directly."""

    model_config = SettingsConfigDict(env_prefix="COE_", env_nested_delimiter="__", extra="forbid")

    database_url: str = ""
    """Any SQLAlchemy URL; empty means a SQLite file `coe.db` in `cache_dir`."""
    data_dir: Path | None = None
    """Benchmark data (MMLU-Pro, GPQA, recorded outcomes); defaults to ../shared/data when it exists."""
    cache_dir: Path = _default_cache_dir()
    """Assembled model weights, embedding cache, trained adapters."""
    pool: str = "embedded"
    """The pool used when a command names none: a registry file, an imported pool's name, or a bundled
    pool's name (`embedded`, `embedded-lora`, `replay-mmlu-pro-ref8`)."""
    seed: int = 0
    threads: int = 0
    """CPU threads per embedded model; 0 picks the number of cores (measured best on 2 cores)."""
    offline: bool = True
    """Keep third-party libraries from reaching the network (hub downloads, litellm's cost map)."""
    ray_address: str | None = None
    """The Ray cluster the `ray` executor joins (`auto`, `HOST:PORT`, `ray://HOST:PORT`); unset, it starts
    a private local one for the run."""
    log_level: str = "WARNING"
    host: str = "127.0.0.1"
    port: int = 8000

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        if self.data_dir is None:
            self.data_dir = _default_data_dir()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.cache_dir / 'coe.db'}"
        return self

    @property
    def n_threads(self) -> int:
        return self.threads or (os.cpu_count() or 1)


OFFLINE_ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "TOKENIZERS_PARALLELISM": "false",
    "RAY_USAGE_STATS_ENABLED": "0",
}


def apply_offline_environment() -> None:
    """Set the variables that keep hub clients and litellm off the network; called by entry points."""
    for key, value in OFFLINE_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
