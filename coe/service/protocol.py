"""The OpenAI chat-completions schema where it defines a field, plus one `coe` object each way.

Requests are validated here (pydantic: a bad field is a 400 naming it); responses are plain dicts in
OpenAI's shape (ChatCompletion, ChatCompletionChunk), built once per answer.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from coe.service.served import Served

MAX_CHOICES = 10


class _Open(BaseModel):
    """OpenAI objects gain fields over time; clients send them, and unknown ones are ignored."""

    model_config = ConfigDict(extra="allow")


class ContentPart(_Open):
    type: str
    text: str | None = None


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None


class StreamOptions(_Open):
    include_usage: bool = False


class CoeOptions(BaseModel):
    """coe's per-request options; the `openai` client sends them with `extra_body={"coe": {...}}`."""

    model_config = ConfigDict(extra="forbid")

    router: str | None = None
    """Another router than the model's (see GET /v1/models: coe/<router>)."""
    k: int | None = Field(default=None, ge=1, le=64)
    """Experts per question, for routers that pick k."""
    aggregator: Literal["majority", "weighted", "llm"] | None = None
    choices: list[str] | None = Field(default=None, min_length=2, max_length=MAX_CHOICES)
    """Options of a multiple-choice question (lettered A, B, ...): the experts' letters are voted on."""
    experts: list[str] | None = Field(default=None, min_length=1)
    """Restrict the pool to these expert ids."""
    max_cost_usd: float | None = Field(default=None, ge=0)
    """Only experts whose worst-case cost for this request, times k, stays within this budget."""
    query_id: str | None = Field(default=None, min_length=1, max_length=200)
    """The question's id in a benchmark: recorded (replay) experts answer by it."""

    @field_validator("choices")
    @classmethod
    def _no_blank_option(cls, choices: list[str] | None) -> list[str] | None:
        if choices is not None and any(not option.strip() for option in choices):
            raise ValueError("an option is blank")
        return choices


class ChatCompletionRequest(_Open):
    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = Field(default=None, ge=1)
    coe: CoeOptions | None = None


class RouteRequest(BaseModel):
    """`POST /v1/route`: the routing decision for a question, without generating."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(default="coe", min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    coe: CoeOptions | None = None


def message_text(content: str | list[ContentPart] | None) -> str | None:
    """A message's text; None when it holds something other than text."""
    if content is None or isinstance(content, str):
        return content or ""
    if any(part.type != "text" or part.text is None for part in content):
        return None
    return "".join(part.text or "" for part in content)


def chat_completion(request_id: str, model: str, answer: Served, finish_reason: str) -> dict[str, Any]:
    """A ChatCompletion of the fused answer (its `coe` object is added as rendered: `with_coe`)."""
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text, "refusal": None},
                "finish_reason": finish_reason,
                "logprobs": None,
            }
        ],
        "usage": usage(answer),
        "system_fingerprint": None,
    }


def chunk(request_id: str, model: str, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    """A ChatCompletionChunk with one choice."""
    return {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
    }


def usage(answer: Served) -> dict[str, int]:
    return {
        "prompt_tokens": answer.n_prompt_tokens,
        "completion_tokens": answer.n_completion_tokens,
        "total_tokens": answer.n_prompt_tokens + answer.n_completion_tokens,
    }


def error_body(message: str, kind: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
