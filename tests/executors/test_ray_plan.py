"""How a group's Ray actor is placed, read from the registry: no cluster needed. The vLLM part (tensor
and pipeline parallel experts on a placement group) is tested here as spec parsing only: no GPU."""

import pickle
from pathlib import Path
from typing import Any

import pytest

from coe.backends.llamacpp import LlamaCppBackend
from coe.backends.vllm import engine_arguments
from coe.errors import RegistryError
from coe.executors.base import GroupJob
from coe.executors.ray import actor_plan
from coe.profile import expert_fingerprint
from coe.registry import Registry, load_registry_file
from coe.schema import ExpertSpec, ResourceSpec
from coe.types import Prompt

REGISTRY = """
experts:
  - id: small
    base: small-model
    backend: {kind: embedded, gguf: small.gguf, threads: 2}
  - id: small-law
    base: small
    adapter: law.gguf
  - id: big
    base: org/big-70b
    backend:
      kind: vllm
      model: /models/big-70b
      tensor_parallel_size: 4
      pipeline_parallel_size: 2
      distributed_executor_backend: ray
      placement_strategy: PACK
    resources: {num_cpus: 2, memory_gib: 64, custom: {a100-node: 1}}
  - id: mid
    base: org/mid-8b
    backend: {kind: vllm, model: /models/mid-8b}
  - id: api
    base: gpt
    backend: {kind: litellm, model: openai/gpt-4o-mini}
"""


def job(*experts: ExpertSpec) -> GroupJob:
    return GroupJob(
        kind=experts[0].backend_kind,
        base=experts[0],
        requests=tuple((e, Prompt("hi")) for e in experts),
        indices=tuple(range(len(experts))),
    )


@pytest.fixture
def pool(tmp_path: Path) -> Registry:
    path = tmp_path / "pool.yaml"
    path.write_text(REGISTRY)
    return Registry(load_registry_file(path), source=str(path))


def test_defaults_follow_the_backend(pool: Registry) -> None:
    embedded = actor_plan(job(pool["small"], pool["small-law"]))
    assert (embedded.options["num_cpus"], embedded.options["num_gpus"]) == (2, 0)  # a CPU per llama.cpp thread
    assert embedded.demand == {"CPU": 2} and not embedded.bundles
    assert embedded.options["max_restarts"] == 0  # the executor replaces a dead actor itself
    one_gpu = actor_plan(job(pool["mid"]))
    assert (one_gpu.options["num_cpus"], one_gpu.options["num_gpus"]) == (1, 1) and not one_gpu.bundles
    api = actor_plan(job(pool["api"]))
    assert api.demand == {}  # an API or recorded expert takes no slot of the cluster


def test_a_sharded_vllm_expert_gets_a_placement_group_and_vllm_its_ray_executor(pool: Registry) -> None:
    spec = pool["big"].backend
    assert spec is not None and spec.kind == "vllm" and spec.n_shards == 8
    plan = actor_plan(job(pool["big"]))
    assert plan.bundles == tuple({"GPU": 1.0, "CPU": 1.0} for _ in range(8)) and plan.strategy == "PACK"
    assert plan.options["num_gpus"] == 0  # the actor takes none: vLLM's workers take one bundle's GPU each
    assert plan.options["memory"] == 64 * 2**30 and plan.options["resources"] == {"a100-node": 1}
    assert plan.demand == {"GPU": 8.0, "CPU": 8.0}
    arguments = engine_arguments(pool["big"], enable_lora=False)
    assert arguments["tensor_parallel_size"] == 4 and arguments["pipeline_parallel_size"] == 2
    assert arguments["distributed_executor_backend"] == "ray"
    plain = engine_arguments(pool["mid"], enable_lora=False)
    assert "tensor_parallel_size" not in plain and "distributed_executor_backend" not in plain


def test_adapters_inherit_their_base_resources_and_shared_models_must_agree(tmp_path: Path, pool: Registry) -> None:
    base = pool["small"].model_copy(update={"resources": ResourceSpec(num_cpus=4)})
    adapter = pool["small-law"].model_copy(update={"resources": None})
    resolved = Registry([base, adapter])
    assert resolved["small-law"].resources == ResourceSpec(num_cpus=4)
    variant = base.model_copy(update={"id": "small-terse", "resources": ResourceSpec(num_cpus=1)})
    with pytest.raises(RegistryError, match="run on one model, so on one Ray actor"):
        Registry([base, variant])
    bad = tmp_path / "bad.yaml"
    bad.write_text(REGISTRY.replace("num_cpus: 2, memory_gib", "cpus: 2, memory_gib"))
    with pytest.raises(
        RegistryError, match=r"experts\[2\] \(id 'big'\)\.resources\.cpus: unknown key 'cpus'; allowed keys: num_cpus"
    ):
        load_registry_file(bad)
    for broken, field in (
        ("tensor_parallel_size: 4", "tensor_parallel_size: 0"),
        ("placement_strategy: PACK", "placement_strategy: TIGHT"),
    ):
        bad.write_text(REGISTRY.replace(broken, field))
        with pytest.raises(RegistryError, match=field.split(":")[0]):
            load_registry_file(bad)


def test_where_an_expert_runs_is_not_part_of_its_identity(pool: Registry) -> None:
    placed = pool["small"].model_copy(update={"resources": ResourceSpec(num_gpus=1)})
    assert expert_fingerprint(placed) == expert_fingerprint(pool["small"])


def test_a_backend_shipped_to_an_actor_carries_its_settings_not_its_models(
    embedded_backend: LlamaCppBackend, embedded_pool: Registry
) -> None:
    smollm = embedded_pool["smollm2-135m"]
    embedded_backend.load(smollm)
    copy = pickle.loads(pickle.dumps(embedded_backend))
    assert embedded_backend.is_loaded(smollm) and not copy.is_loaded(smollm)
    assert (copy.cache_dir, copy.threads) == (embedded_backend.cache_dir, embedded_backend.threads)


def test_a_ray_address_without_the_ray_executor_is_refused(coe_here: Any, tmp_path: Path) -> None:
    env = {"COE_DATABASE_URL": f"sqlite:///{tmp_path / 'coe.db'}", "COE_CACHE_DIR": str(tmp_path)}
    run = coe_here(
        "eval",
        "--pool",
        "replay-mmlu-pro-ref8",
        "--bench",
        "mmlu-pro",
        "--split",
        "random:10:0",
        "--ray-address",
        "auto",
        env=env,
    )
    assert run.returncode == 2 and "--ray-address auto joins a Ray cluster: add --executor ray" in run.stderr
