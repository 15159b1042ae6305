"""Any API model or OpenAI-compatible server (vLLM's included), through litellm.

Batch-first: `generate` fans the prompts out concurrently, at most `max_concurrency` at a time,
and returns results in input order. Each failed call becomes that prompt's `Generation.error`, a
typed failure that says whether retrying may help. Retries happen here only, in one layer: a
retryable failure is tried again up to `num_retries` times with exponential backoff (capped); the
litellm and OpenAI client retries underneath are turned off, so retries never multiply.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from coe.backends.base import Capabilities, NoLoadMixin, TextSink
from coe.errors import BackendError, BackendUnavailableError, GenerationError
from coe.schema import ExpertSpec, LitellmBackendSpec, is_masked
from coe.types import Failure, FailureKind, Generation, GenerationParams, Prompt

_TRANSPORT: dict[str, FailureKind] = {
    "APIConnectionError": "connection",
    "ConnectError": "connection",
    "ConnectionError": "connection",
    "ConnectionRefusedError": "connection",
    "APITimeoutError": "timeout",
    "Timeout": "timeout",
    "TimeoutException": "timeout",
    "ReadTimeout": "timeout",
    "ConnectTimeout": "timeout",
}
"""Transport failures, found anywhere in the exception chain: litellm wraps a refused connection in an
`InternalServerError` with status 500, which is not what happened."""
_PROVIDER: dict[str, FailureKind] = {
    "RateLimitError": "rate_limit",
    "ServiceUnavailableError": "server",
    "InternalServerError": "server",
    "BadGatewayError": "server",
    "AuthenticationError": "auth",
    "PermissionDeniedError": "auth",
    "ContextWindowExceededError": "too_long",
    "BadRequestError": "bad_request",
    "NotFoundError": "bad_request",
    "UnprocessableEntityError": "bad_request",
}
_RETRYABLE_KINDS = frozenset({"rate_limit", "timeout", "connection", "server"})
RETRY_BASE_S = 0.5
RETRY_CAP_S = 8.0


class LitellmBackend(NoLoadMixin):
    """Calls models through litellm; nothing to load, so loads are free."""

    capabilities = Capabilities(needs_load=False, streams=True)

    def generate(self, expert: ExpertSpec, prompts: Sequence[Prompt], params: GenerationParams) -> list[Generation]:
        spec = _litellm_spec(expert)
        litellm = _import_litellm(expert.id)
        try:
            api_key = api_key_of(spec, expert.id)
        except GenerationError as error:
            return [Generation(text="", error=error.failure()) for _ in prompts]
        with ThreadPoolExecutor(max_workers=min(spec.max_concurrency, max(len(prompts), 1))) as pool:
            return list(pool.map(lambda prompt: self._call(litellm, expert, spec, api_key, prompt, params), prompts))

    def _call(
        self,
        litellm: Any,
        expert: ExpertSpec,
        spec: LitellmBackendSpec,
        api_key: str | None,
        prompt: Prompt,
        params: GenerationParams,
    ) -> Generation:
        started = time.perf_counter()
        for attempt in range(spec.num_retries + 1):
            try:
                response = litellm.completion(**_arguments(spec, api_key, prompt, params))
                break
            except Exception as error:  # every provider error becomes this prompt's error, not the batch's
                mapped = map_litellm_error(error, expert.id)
                if not mapped.retryable or attempt == spec.num_retries:
                    return Generation(text="", latency_s=time.perf_counter() - started, error=mapped.failure())
                time.sleep(_backoff_s(attempt))
        latency_s = time.perf_counter() - started
        content = response.choices[0].message.content
        if content is None:
            missing = Failure("the reply has no content (content: null)", kind="bad_output", expert=expert.id)
            return Generation(text="", latency_s=latency_s, error=missing)
        return _generation(content, getattr(response, "usage", None), latency_s)

    def stream(self, expert: ExpertSpec, prompt: Prompt, params: GenerationParams, on_text: TextSink) -> Generation:
        """One prompt, streamed: each delta goes to `on_text`. A retryable failure before the first delta
        is retried like a plain call; a failure midway keeps the text so far."""
        spec = _litellm_spec(expert)
        litellm = _import_litellm(expert.id)
        try:
            api_key = api_key_of(spec, expert.id)
        except GenerationError as error:
            return Generation(text="", error=error.failure())
        pieces: list[str] = []
        usage: Any = None
        started = time.perf_counter()
        for attempt in range(spec.num_retries + 1):
            try:
                chunks = litellm.completion(
                    **_arguments(spec, api_key, prompt, params), stream=True, stream_options={"include_usage": True}
                )
                for chunk in chunks:
                    usage = getattr(chunk, "usage", None) or usage
                    piece = chunk.choices[0].delta.content if chunk.choices else None
                    if piece:
                        pieces.append(piece)
                        on_text(piece)
                break
            except Exception as error:  # a provider error fails this prompt, keeping what was streamed
                mapped = map_litellm_error(error, expert.id)
                if pieces or not mapped.retryable or attempt == spec.num_retries:
                    failure = mapped.failure()
                    return Generation(text="".join(pieces), latency_s=time.perf_counter() - started, error=failure)
                time.sleep(_backoff_s(attempt))
        return _generation("".join(pieces), usage, time.perf_counter() - started)


def _arguments(
    spec: LitellmBackendSpec, api_key: str | None, prompt: Prompt, params: GenerationParams
) -> dict[str, Any]:
    """One call's arguments; litellm's and the OpenAI client's own retries are off (ours are above)."""
    messages = [{"role": "system", "content": spec.system_prompt}] if spec.system_prompt else []
    messages.append({"role": "user", "content": prompt.text})
    return {
        "model": spec.model,
        "messages": messages,
        "api_base": spec.api_base,
        "api_key": api_key,
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "seed": params.seed,
        "stop": list(params.stop) or None,
        "timeout": spec.timeout_s,
        "num_retries": 0,
        "max_retries": 0,
    }


def _backoff_s(attempt: int) -> float:
    return min(RETRY_CAP_S, RETRY_BASE_S * 2**attempt)


def _generation(text: str, usage: Any, latency_s: float) -> Generation:
    return Generation(
        text=text,
        n_prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
        n_completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
        latency_s=latency_s,
    )


def map_litellm_error(error: Exception, expert: str) -> GenerationError:
    """A litellm/OpenAI exception as a `GenerationError` naming the expert, its kind, status and retryability."""
    chain = list(_chain(error))
    transport = next((_TRANSPORT[type(e).__name__] for e in chain if type(e).__name__ in _TRANSPORT), None)
    status = None if transport else getattr(error, "status_code", None)
    kind: FailureKind = (
        transport
        or _PROVIDER.get(type(error).__name__)
        or ("server" if isinstance(status, int) and status >= 500 else "error")
    )
    retryable = kind in _RETRYABLE_KINDS
    message = getattr(error, "message", None) or str(error)
    detail = f"{kind} error" + (f" (HTTP {status})" if status else "") + f": {message}"
    hint = "; retrying may help" if retryable else ""
    mapped = GenerationError(detail + hint, expert=expert, retryable=retryable, kind=kind)
    mapped.__cause__ = error
    return mapped


def api_key_of(spec: LitellmBackendSpec, expert: str) -> str | None:
    """The key for this call: read from `api_key_env` now (the one place coe reads a secret from the
    environment, so a rotated key needs no re-import), or the literal one, unless it was masked."""
    if spec.api_key_env is not None:
        key = os.environ.get(spec.api_key_env)
        if not key:
            raise GenerationError(
                f"the environment variable {spec.api_key_env} named by its `api_key_env` is not set; "
                "export the API key in it",
                expert=expert,
                kind="auth",
            )
        return key
    if spec.api_key is None:
        return None
    key = spec.api_key.get_secret_value()
    if is_masked(key):
        raise GenerationError(
            f"its api_key {key} is masked (coe never stores or exports a key in clear); "
            "give the expert `api_key_env: NAME` in its registry file and export the key as NAME",
            expert=expert,
            kind="auth",
        )
    return key


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _litellm_spec(expert: ExpertSpec) -> LitellmBackendSpec:
    if not isinstance(expert.backend, LitellmBackendSpec):
        raise BackendError(f"not a litellm expert (backend kind {expert.backend_kind!r})", expert=expert.id)
    return expert.backend


def _import_litellm(expert: str) -> Any:
    # Without a local cost map litellm fetches one from the network at import.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        import litellm
    except ImportError as error:
        raise BackendUnavailableError(
            "the litellm backend needs litellm: pip install 'coe[litellm]'", expert=expert
        ) from error
    litellm.suppress_debug_info = True
    return litellm
