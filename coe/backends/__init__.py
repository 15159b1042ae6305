"""Backends run experts; one per backend kind, injected into the Composer like an HTTP transport."""

from __future__ import annotations

from pathlib import Path

from coe.backends.base import Backend
from coe.backends.litellm import LitellmBackend
from coe.backends.llamacpp import LlamaCppBackend
from coe.backends.replay import ReplayBackend
from coe.backends.vllm import VllmBackend


def default_backends(*, cache_dir: Path, threads: int = 0) -> dict[str, Backend]:
    """One backend per kind; construction is cheap and loads nothing."""
    return {
        "embedded": LlamaCppBackend(cache_dir=cache_dir, threads=threads),
        "litellm": LitellmBackend(),
        "replay": ReplayBackend(),
        "vllm": VllmBackend(),
    }


__all__ = ["Backend", "LitellmBackend", "LlamaCppBackend", "ReplayBackend", "VllmBackend", "default_backends"]
