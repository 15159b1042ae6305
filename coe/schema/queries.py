"""What flows through a composition: queries, routes, each expert's answer, the fused answer."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from coe.schema.base import Frozen
from coe.types import Failure

# --------------------------------------------------------------------------- queries and answers


class Query(Frozen):
    """One question; `choices` makes it multiple choice (letters A–J), `gold` makes it scorable."""

    id: str
    text: str
    choices: tuple[str, ...] | None = None
    category: str | None = None
    gold: str | None = None
    skills: tuple[str, ...] = ()
    source: str | None = None

    @field_validator("text", mode="before")
    @classmethod
    def _text_is_a_question(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = valid_unicode(value)
            if not value.strip():
                raise ValueError("the question is empty")
        return value

    @field_validator("choices", mode="before")
    @classmethod
    def _choices_are_options(cls, value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError("choices must be a list of options, not one string")
        if value is not None:
            value = tuple(valid_unicode(v) if isinstance(v, str) else v for v in value)
            if any(isinstance(v, str) and not v.strip() for v in value):
                raise ValueError("an option is blank")
        return value


def valid_unicode(text: str) -> str:
    """`text` with lone surrogates (undecodable bytes from a terminal or a file) replaced by U+FFFD, so
    every backend can encode it."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        raw = text.encode("utf-8", "surrogateescape")  # bytes a terminal could not decode, as they were
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "replace")


class ExpertChoice(Frozen):
    """An expert picked by a router, with its score."""

    expert: str
    score: float


class Route(Frozen):
    """Which experts answer a query and why; data only, stored with every result."""

    query_id: str
    experts: tuple[ExpertChoice, ...]
    reason: str
    router: str
    params: dict[str, Any] = Field(default_factory=dict)
    fallbacks: tuple[ExpertChoice, ...] = ()
    """The experts ranked after the picked ones, best first: who replaces a picked expert that fails."""

    @property
    def expert_ids(self) -> list[str]:
        return [choice.expert for choice in self.experts]


class ExpertAnswer(Frozen):
    """One expert's answer to one query."""

    expert: str
    text: str
    choice: str | None = None
    guessed: bool = False
    """The letter was found only as a stray standalone letter: the response never states an answer."""
    n_prompt_tokens: int = 0
    n_completion_tokens: int = 0
    latency_s: float = 0.0
    error: Failure | None = None
    """Why the expert gave no answer (kind, retryable, message); None when it answered."""


class Fallback(Frozen):
    """A picked expert replaced at answer time: why, and by whom (None when no ranked expert was left)."""

    expert: str
    error: Failure
    replacement: str | None = None


class Answer(Frozen):
    """The fused answer to one query, with everything needed to trace it."""

    query_id: str
    answer: str
    choice: str | None
    experts: tuple[str, ...]
    expert_answers: tuple[ExpertAnswer, ...]
    route: Route
    aggregator: str
    votes: dict[str, float] = Field(default_factory=dict)
    n_prompt_tokens: int = 0
    n_completion_tokens: int = 0
    cost_usd: float = 0.0
    timings: dict[str, float] = Field(default_factory=dict)
    gold: str | None = None
    correct: bool | None = None
    fallbacks: tuple[Fallback, ...] = ()
    """Picked experts that failed (or were unavailable) and their replacements, in route order."""
