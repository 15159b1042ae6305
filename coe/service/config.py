"""How one service runs: its composition and its limits."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from coe.compose import CompositionSpec
from coe.schema import Frozen

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})

ComposerKind = Literal["process", "thread"]


class ServiceConfig(Frozen):
    composition: CompositionSpec
    """What `model=coe` answers with; `coe/<router>` is the same with another router."""
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    synthesizer: str | None = None
    """The llm aggregator's expert for free-form questions answered by several experts; default: the
    one `coe aggregators probe` stored, else the top-ranked expert's answer is returned."""
    max_queue: int = Field(default=1024, ge=1)
    """Requests waiting for a batch; past this, 429 with Retry-After."""
    max_batch: int = Field(default=256, ge=1)
    batch_window_s: float = Field(default=0.0, ge=0)
    """How long a batch waits for more requests before it starts (0: requests that arrive while a
    batch runs form the next one)."""
    request_timeout_s: float = Field(default=300.0, gt=0)
    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    max_prompt_chars: int = Field(default=200_000, ge=1)
    max_tokens_limit: int = Field(default=4096, ge=1)
    """The largest max_tokens a request may ask for."""
    max_resident: int | None = Field(default=None, ge=1)
    """Local models kept loaded at once; default: every local model the pool has."""
    cooldown_after: int = Field(default=3, ge=0)
    """Consecutive failures that put an expert in cool-down (0: never)."""
    cooldown_s: float = Field(default=30.0, ge=0)
    require_keys: bool = False
    """Demand an API key even when none exists yet (always so beyond loopback)."""
    log_prompts: bool = False
    """Keep each request's question in the request log (off: prompts are never stored)."""
    key_refresh_s: float = Field(default=1.0, gt=0)
    composer: ComposerKind = "process"
    """Where batches are composed: a process of its own (HTTP and composing on two cores; the models
    still load once, there), or a thread of the service's process."""

    @property
    def keys_required(self) -> bool:
        return self.require_keys or self.host not in LOOPBACK
