"""The embedded CPU backend: real GGUF models run in-process by llama.cpp (through xllamacpp).

Why xllamacpp: a prebuilt wheel (no 5–19 minute compile as llama-cpp-python needs), llama.cpp's
own server engine in-process (thread-safe, runtime LoRA adapters chosen per request) and an
OpenAI-compatible HTTP endpoint on loopback for free. Requests run one at a time with prompt caching
off: on 2 cores parallel slots gained under 10% and made greedy decoding depend on batch makeup.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from coe.backends.base import COMPLETION_STOPS, Capabilities, TextSink
from coe.backends.weights import locate_weights
from coe.errors import BackendError, BackendUnavailableError
from coe.schema import EmbeddedBackendSpec, ExpertSpec
from coe.types import Failure, FailureKind, Generation, GenerationParams, LoadReport, Prompt


@dataclass(slots=True)
class _Resident:
    server: Any
    adapters: list[ExpertSpec]
    """The adapters loaded on this base, in the server's LoRA order."""

    @property
    def adapter_ids(self) -> dict[str, int]:
        return {adapter.id: index for index, adapter in enumerate(self.adapters)}


class LlamaCppBackend:
    """Loads each base model once and serves it and all its LoRA adapters from that one load.

    It keeps what it loaded until told to unload; the scheduler decides how many stay resident.
    """

    capabilities = Capabilities(streams=True)

    def __init__(self, *, cache_dir: Path, threads: int = 0) -> None:
        self.cache_dir = Path(cache_dir)
        self.threads = threads
        self._resident: dict[str, _Resident] = {}

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        """A pickled copy (what a Ray actor receives) is the configuration, with nothing loaded."""
        return partial(type(self), cache_dir=self.cache_dir, threads=self.threads), ()

    # ----------------------------------------------------------------------- loading

    def model_path(self, expert: ExpertSpec) -> Path:
        spec = _embedded_spec(expert)
        if spec.gguf is not None:
            if not spec.gguf.is_file():
                raise BackendUnavailableError(f"GGUF file {spec.gguf} does not exist", expert=expert.id)
            return spec.gguf
        assert spec.weights is not None
        return locate_weights(spec.weights, self.cache_dir, expert=expert.id)

    def is_loaded(self, expert: ExpertSpec) -> bool:
        resident = self._resident.get(expert.load_key)
        return resident is not None and (not expert.is_adapter or expert.id in resident.adapter_ids)

    def load(self, expert: ExpertSpec, adapters: Sequence[ExpertSpec] = ()) -> LoadReport:
        """Start a llama.cpp server for the base model with every adapter it will serve."""
        key = expert.load_key
        wanted = [a for a in ([expert] if expert.is_adapter else []) + list(adapters) if a.is_adapter]
        resident = self._resident.get(key)
        if resident is not None and all(a.id in resident.adapter_ids for a in wanted):
            return LoadReport(key=key, loaded=False)
        if resident is not None:  # the adapter set grew: reload with the union
            wanted += [a for a in resident.adapters if a.id not in {w.id for w in wanted}]
            self._stop(key)
        started = time.perf_counter()
        path = self.model_path(expert)
        self._resident[key] = _Resident(server=self._start_server(expert, path, wanted), adapters=wanted)
        n_bytes = path.stat().st_size + sum(Path(a.adapter).stat().st_size for a in wanted if a.adapter)
        return LoadReport(key=key, seconds=time.perf_counter() - started, n_bytes=n_bytes)

    def _start_server(self, expert: ExpertSpec, path: Path, adapters: Sequence[ExpertSpec]) -> Any:
        xlc = _import_xllamacpp(expert.id)
        spec = _embedded_spec(expert)
        params = xlc.CommonParams()
        params.model.path = str(path)
        params.n_ctx = expert.context  # the registry's, the one context setting
        params.n_parallel = 1
        params.cache_prompt = False
        params.verbosity = 0
        params.endpoint_metrics = True  # makes the metrics call below a round trip through the loop
        params.hostnames = ["127.0.0.1"]
        params.port = 0
        threads = spec.threads or self.threads or (os.cpu_count() or 1)
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
        if adapters:
            infos = []
            for adapter in adapters:
                adapter_path = Path(adapter.adapter or "")
                if not adapter_path.is_file():
                    raise BackendUnavailableError(
                        f"LoRA adapter file {adapter_path} does not exist; train it with "
                        "`coe adapters train` (see README)",
                        expert=adapter.id,
                    )
                # Scale 0 at load: a request that names no adapter gets the plain base (each
                # request's `lora` list sets the scales; llama.cpp falls back to these).
                infos.append(xlc.CommonAdapterLoraInfo(str(adapter_path), 0.0))
            params.lora_adapters = infos
            params.lora_init_without_apply = True
        try:
            server = xlc.Server(params)
        except RuntimeError as error:
            raise BackendError(f"llama.cpp could not load {path}: {error}", expert=expert.id) from error
        # xllamacpp's constructor returns before its task loop starts; a server destroyed in that
        # gap never sees the stop signal and its destructor waits forever (xllamacpp 2026.10).
        # A metrics request is answered by the loop itself, so once it returns the loop runs.
        server.handle_metrics()
        return server

    def address(self, expert: ExpertSpec) -> str:
        """The loopback URL of the resident model's OpenAI-compatible HTTP server."""
        self.load(expert)
        return str(self._resident[expert.load_key].server.listening_address)

    def unload(self, expert: ExpertSpec) -> None:
        self._stop(expert.load_key)

    def _stop(self, key: str) -> None:
        self._resident.pop(key, None)  # the server's destructor stops its threads and frees the model

    def close(self) -> None:
        for key in list(self._resident):
            self._stop(key)

    def __enter__(self) -> LlamaCppBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ----------------------------------------------------------------------- generation

    def generate(self, expert: ExpertSpec, prompts: Sequence[Prompt], params: GenerationParams) -> list[Generation]:
        server, requests = self._requests(expert, prompts, params)
        return [self._generate_one(server, request) for request in requests]

    def stream(self, expert: ExpertSpec, prompt: Prompt, params: GenerationParams, on_text: TextSink) -> Generation:
        """One prompt, token by token: llama.cpp calls back with each chunk (returning True stops it)."""
        server, (request,) = self._requests(expert, [prompt], params)
        request.update(stream=True, stream_options={"include_usage": True})
        pieces: list[str] = []
        last: dict[str, Any] = {}

        def receive(chunk: dict[str, Any]) -> bool:
            if "error" in chunk:
                last["error"] = chunk["error"]
                return True
            last["usage"] = chunk.get("usage") or last.get("usage", {})
            for choice in chunk.get("choices", ()):
                piece = choice["delta"].get("content") if "delta" in choice else choice.get("text")
                if piece:
                    pieces.append(piece)
                    on_text(piece)  # an exception here (a client gone) stops the generation
            return False

        started = time.perf_counter()
        handler = server.handle_chat_completions if "messages" in request else server.handle_completions
        handler(request, receive)
        return _generation({"choices": [{"text": "".join(pieces)}], **last}, time.perf_counter() - started)

    def _requests(
        self, expert: ExpertSpec, prompts: Sequence[Prompt], params: GenerationParams
    ) -> tuple[Any, list[dict[str, Any]]]:
        """The resident server of `expert` (loading it when needed) and one llama.cpp request per prompt."""
        self.load(expert)
        resident = self._resident[expert.load_key]
        spec = _embedded_spec(expert)
        lora = _lora_selection(resident.adapter_ids, expert.id if expert.is_adapter else None)
        requests = []
        for prompt in prompts:
            request: dict[str, Any] = {
                "max_tokens": params.max_tokens,
                "temperature": params.temperature,
                "seed": params.seed,
                "cache_prompt": False,
            }
            if params.temperature == 0:
                request["top_k"] = 1
            if lora:
                request["lora"] = lora
            if spec.prompt_format == "chat":
                system = [{"role": "system", "content": spec.system_prompt}] if spec.system_prompt else []
                request["messages"] = [*system, {"role": "user", "content": prompt.text}]
                request["stop"] = list(params.stop)
            else:
                request["prompt"] = prompt.text
                request["stop"] = list(params.stop or COMPLETION_STOPS)
            requests.append(request)
        return resident.server, requests

    @staticmethod
    def _generate_one(server: Any, request: dict[str, Any]) -> Generation:
        started = time.perf_counter()
        if "messages" in request:
            result = server.handle_chat_completions(request)
        else:
            result = server.handle_completions(request)
        return _generation(result, time.perf_counter() - started)


def _generation(result: dict[str, Any], latency_s: float) -> Generation:
    """A llama.cpp response (or a stream's assembled text, usage and error) as a Generation."""
    choices = result.get("choices") or [{}]
    choice = choices[0]
    text = (choice["message"]["content"] if "message" in choice else choice.get("text")) or ""
    usage = result.get("usage") or {}
    n_prompt, n_completion = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
    if "error" in result:
        error = result["error"]
        message = str(error.get("message", error) if isinstance(error, dict) else error)
        kind: FailureKind = "too_long" if "context" in message.lower() else "error"
        failure = Failure(f"llama.cpp: {message}", kind=kind)
        return Generation(
            text=text, n_prompt_tokens=n_prompt, n_completion_tokens=n_completion, latency_s=latency_s, error=failure
        )
    return Generation(text=text, n_prompt_tokens=n_prompt, n_completion_tokens=n_completion, latency_s=latency_s)


def _lora_selection(adapter_ids: dict[str, int], active: str | None) -> list[dict[str, float]]:
    """Per-request adapter scales: the active adapter at 1, every other loaded one at 0."""
    return [{"id": index, "scale": 1.0 if expert_id == active else 0.0} for expert_id, index in adapter_ids.items()]


def _embedded_spec(expert: ExpertSpec) -> EmbeddedBackendSpec:
    if not isinstance(expert.backend, EmbeddedBackendSpec):
        raise BackendError(f"not an embedded expert (backend kind {expert.backend_kind!r})", expert=expert.id)
    return expert.backend


def _import_xllamacpp(expert: str) -> Any:
    try:
        import xllamacpp
    except ImportError as error:
        raise BackendUnavailableError(
            "the embedded backend needs xllamacpp: pip install 'coe[embedded]'", expert=expert
        ) from error
    return xllamacpp
