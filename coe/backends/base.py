"""The `Backend` protocol: batch-first, like an HTTP transport.

Construction is cheap and does no I/O; `load` does the heavy work and only the scheduler decides
when. `generate` takes a list and returns one `Generation` per prompt, in order; a failure on one
prompt is returned as `Generation(error=Failure(...))`, not raised, so it fails alone.

What a backend can do is declared on it (`capabilities`), so the scheduler and the evaluation ask the
backend instead of testing kind strings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, Self, runtime_checkable

from coe.schema import ExpertSpec
from coe.types import Generation, GenerationParams, LoadReport, Prompt

COMPLETION_STOPS = ("\nQuestion:", "\n\n\n")
"""Where a base model prompted completion-style stops: before it invents the next question."""


@dataclass(frozen=True, slots=True)
class Capabilities:
    needs_load: bool = True
    """A local model that must be resident to generate; False for APIs and recorded answers, whose
    groups need no load and run concurrently beside the local ones."""
    group_calls: bool = False
    """`generate_group` runs a base model and its adapters' requests in one engine call (vLLM)."""
    recorded: bool = False
    """Outputs are recorded data already on disk: evaluation does not store their text again."""
    streams: bool = False
    """`stream` hands text to a callback as it is generated (token by token)."""


TextSink = Callable[[str], None]
"""Receives each piece of a generation's text as it is produced."""


@runtime_checkable
class Backend(Protocol):
    """Runs experts of one backend kind."""

    capabilities: Capabilities

    def load(self, expert: ExpertSpec, adapters: Sequence[ExpertSpec] = ()) -> LoadReport:
        """Make `expert`'s model resident (with `adapters` on it); free when already resident."""
        ...

    def generate(self, expert: ExpertSpec, prompts: Sequence[Prompt], params: GenerationParams) -> list[Generation]:
        """One generation per prompt, in order; loads the model first if it is not resident."""
        ...

    def unload(self, expert: ExpertSpec) -> None:
        """Free `expert`'s model (a no-op for API backends)."""
        ...

    def is_loaded(self, expert: ExpertSpec) -> bool:
        """Whether serving `expert` now needs no load."""
        ...

    def close(self) -> None:
        """Free everything."""
        ...


@runtime_checkable
class GroupBackend(Backend, Protocol):
    """A backend that runs a base model and its adapters in one call (vLLM: a LoRA request per prompt)."""

    def generate_group(
        self, requests: Sequence[tuple[ExpertSpec, Prompt]], params: GenerationParams
    ) -> list[Generation]: ...


@runtime_checkable
class StreamingBackend(Backend, Protocol):
    """A backend that streams: `capabilities.streams` is True."""

    def stream(self, expert: ExpertSpec, prompt: Prompt, params: GenerationParams, on_text: TextSink) -> Generation:
        """Generate one prompt, handing each piece of text to `on_text` as it comes; the whole Generation
        at the end (a failure after some text keeps that text, so callers know the stream broke)."""
        ...


class NoLoadMixin:
    """For backends with nothing to load (APIs, recorded responses)."""

    capabilities = Capabilities(needs_load=False)

    def load(self, expert: ExpertSpec, adapters: Sequence[ExpertSpec] = ()) -> LoadReport:
        return LoadReport(key=expert.load_key, loaded=False)

    def unload(self, expert: ExpertSpec) -> None:
        return None

    def is_loaded(self, expert: ExpertSpec) -> bool:
        return True

    def close(self) -> None:
        return None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
