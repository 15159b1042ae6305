"""The Ray executor on a real two-node cluster (loopback, 1 CPU per node): real GGUF models in actors,
the same outputs as in-process, one load per base, actors on both nodes, residency and LRU eviction per
actor, an actor killed mid-batch, a model no node can host, and `coe eval --executor ray`."""

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coe.backends.litellm import LitellmBackend
from coe.backends.llamacpp import LlamaCppBackend
from coe.backends.replay import ReplayBackend
from coe.compose import CompositionBuilder, CompositionSpec
from coe.executors.ray import RayExecutor
from coe.registry import Registry, dump_registry
from coe.scheduler import Request, Scheduler
from coe.schema import ExpertSpec, LitellmBackendSpec, Query, ResourceSpec
from coe.types import GenerationParams, Prompt
from tests.conftest import DATA_DIR, REPO, session_processes

PARAMS = GenerationParams(max_tokens=6)
LORA_POOL = REPO / "registry" / "embedded-lora.yaml"
REF8 = REPO / "registry" / "replay-mmlu-pro-ref8.yaml"
QUESTIONS = ("What is 12 + 7?", "Name a primary colour.", "What is 9 - 4?")


@pytest.fixture(scope="module")
def pool() -> Registry:
    """Two bases (SmolLM2, Gemma 3) and two LoRA adapters on SmolLM2."""
    return Registry.from_file(LORA_POOL, DATA_DIR).subset(
        ["smollm2-135m", "gemma3-270m", "smollm2-arithmetic", "smollm2-mmlu-letter"]
    )


@pytest.fixture(scope="module")
def backend(weights_cache: Path) -> Iterator[LlamaCppBackend]:
    """One llama.cpp thread per model, in this process and in every actor alike (1 CPU per node)."""
    with LlamaCppBackend(cache_dir=weights_cache, threads=1) as backend:
        yield backend


@pytest.fixture(scope="module")
def requests(pool: Registry) -> list[Request]:
    return [
        Request(expert, Prompt(question, query_id=str(i)))
        for i, question in enumerate(QUESTIONS)
        for expert in pool.experts
    ]


@pytest.fixture(scope="module")
def local_texts(backend: LlamaCppBackend, requests: list[Request]) -> list[str]:
    outputs, stats = Scheduler({"embedded": backend}).run(requests, PARAMS)
    assert all(o.ok for o in outputs) and stats.n_loads == 2
    return [o.text for o in outputs]


@pytest.fixture
def on_ray(ray_cluster: Any, backend: LlamaCppBackend) -> Iterator[Any]:
    """`on_ray(**scheduler options)`: ray schedulers on the session cluster, closed after the test."""
    made: list[Scheduler] = []

    def make(**options: Any) -> Scheduler:
        made.append(Scheduler({"embedded": backend, "replay": ReplayBackend()}, executor="ray", **options))
        return made[-1]

    yield make
    for scheduler in made:
        scheduler.close()


def ray_executor(scheduler: Scheduler) -> RayExecutor:
    assert isinstance(scheduler.executor, RayExecutor)
    return scheduler.executor


def test_two_nodes_give_the_local_outputs_with_one_load_per_base(
    on_ray: Any, requests: list[Request], local_texts: list[str], pool: Registry
) -> None:
    import ray

    scheduler = on_ray()
    outputs, stats = scheduler.run(requests, PARAMS)
    assert [o.text for o in outputs] == local_texts  # greedy: same text per request, in request order
    assert stats.n_loads == 2 == len({e.load_key for e in pool.experts})
    assert stats.n_actor_starts == 2 and stats.n_restarts == 0 and stats.transfer_s >= 0
    nodes = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
    assert set(ray_executor(scheduler).placement().values()) == nodes  # one actor per node (1 CPU each)
    again, resident = scheduler.run(requests[:4], PARAMS)
    assert (resident.n_loads, resident.n_actor_starts) == (0, 0)  # the actors kept their models
    assert [o.text for o in again] == local_texts[:4]
    scheduler.close()
    assert ray_executor(scheduler).actors() == {}


def test_residency_and_lru_eviction_per_actor(on_ray: Any, requests: list[Request], local_texts: list[str]) -> None:
    scheduler = on_ray(max_resident=1)
    outputs, first = scheduler.run(requests, PARAMS)
    assert [o.text for o in outputs] == local_texts and first.n_loads == 2
    assert len(ray_executor(scheduler).actors()) == 1  # the other model's actor was ended to make room
    outputs, second = scheduler.run(requests, PARAMS)
    assert [o.text for o in outputs] == local_texts
    assert second.n_loads == 1 and len(ray_executor(scheduler).actors()) == 1  # the resident ran first, free


def test_naive_mode_loads_per_request_inside_the_actors(
    on_ray: Any, requests: list[Request], local_texts: list[str]
) -> None:
    outputs, stats = on_ray(mode="naive").run(requests[:4], PARAMS)
    assert stats.n_loads == 4 and [o.text for o in outputs] == local_texts[:4]


def kill_while_busy(executor: RayExecutor, key: tuple[str, str], times: int, done: threading.Event) -> list[float]:
    """Kill the model's actor while it runs its group, `times` times; the kill times."""
    import ray

    killed: list[float] = []
    while len(killed) < times and not done.is_set():
        handle = executor.actors().get(key)
        try:
            busy = handle is not None and ray.get(handle.status.remote(), timeout=5).busy
        except ray.exceptions.RayError:
            busy = False  # dead or restarting: wait for the next one
        if busy:
            ray.kill(handle)
            killed.append(time.perf_counter())
        time.sleep(0.05)
    return killed


def run_while_killing(scheduler: Scheduler, requests: list[Request], key: tuple[str, str], times: int) -> Any:
    done = threading.Event()
    kills: list[float] = []
    killer = threading.Thread(target=lambda: kills.extend(kill_while_busy(ray_executor(scheduler), key, times, done)))
    killer.start()
    try:
        outputs, stats = scheduler.run(requests, PARAMS)
    finally:
        done.set()
        killer.join()
    return outputs, stats, kills


def test_an_actor_killed_mid_batch_is_restarted_and_its_group_run_again(
    on_ray: Any, requests: list[Request], local_texts: list[str], pool: Registry
) -> None:
    smollm = ("embedded", pool["smollm2-135m"].load_key)
    outputs, stats, kills = run_while_killing(on_ray(), requests, smollm, times=1)
    assert len(kills) == 1
    assert len(outputs) == len(requests) and [o.text for o in outputs] == local_texts  # each answered once
    assert stats.n_restarts == 1 and stats.n_errors == 0


def test_an_actor_that_keeps_dying_fails_its_requests_and_no_others(
    on_ray: Any, requests: list[Request], local_texts: list[str], pool: Registry
) -> None:
    smollm = ("embedded", pool["smollm2-135m"].load_key)
    outputs, stats, kills = run_while_killing(on_ray(), requests, smollm, times=2)
    assert len(kills) == 2 and len(outputs) == len(requests)
    for request, output, text in zip(requests, outputs, local_texts, strict=True):
        if request.expert.load_key == smollm[1]:
            assert output.error is not None and not output.text
            assert (output.error.kind, output.error.retryable, output.error.expert) == (
                "server",
                True,
                request.expert.id,
            )
            assert "died twice" in output.error.message
        else:
            assert output.text == text  # Gemma's group answered
    assert stats.n_errors == 9


def test_a_model_no_node_can_host_fails_typed_without_holding_the_batch(on_ray: Any) -> None:
    pool = Registry.from_file(REF8, DATA_DIR)
    needs_gpu = pool.experts[0].model_copy(update={"resources": ResourceSpec(num_gpus=1)})
    fine = pool.experts[1]
    scheduler = on_ray()
    ray_executor(scheduler).start_timeout_s = 2.0
    requests = [Request(expert, Prompt("", query_id=str(q))) for q in (70, 71) for expert in (needs_gpu, fine)]
    outputs, _ = scheduler.run(requests, PARAMS)
    assert [o.ok for o in outputs] == [False, True, False, True]
    failure = outputs[0].error
    assert failure is not None and failure.kind == "unavailable" and failure.expert == needs_gpu.id
    assert "no node of the Ray cluster started the actor" in failure.message and "GPU 1" in failure.message


def test_an_api_expert_on_the_cluster_gets_its_key_from_this_process(
    ray_cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The variable its `api_key_env` names is set here after the nodes started: the actor still has it."""
    monkeypatch.setenv("COE_TEST_RAY_KEY", "sk-test-1234567890")
    backend = LitellmBackendSpec(
        model="openai/m", api_base="http://127.0.0.1:9/v1", api_key_env="COE_TEST_RAY_KEY", num_retries=0, timeout_s=5
    )
    keyed = ExpertSpec(id="api", base="m", backend=backend)
    unset = ExpertSpec(id="api-unset", base="m", backend=backend.model_copy(update={"api_key_env": "COE_TEST_UNSET"}))
    scheduler = Scheduler({"litellm": LitellmBackend()}, executor="ray")
    try:
        outputs, _ = scheduler.run([Request(keyed, Prompt("Hi")), Request(unset, Prompt("Hi"))], PARAMS)
    finally:
        scheduler.close()
    assert outputs[0].error is not None and outputs[0].error.kind != "auth"  # called (a closed port) with its key
    assert outputs[1].error is not None and outputs[1].error.kind == "auth"
    assert "COE_TEST_UNSET" in outputs[1].error.message


def test_joining_a_cluster_by_address(ray_cluster: Any) -> None:
    import ray

    ray.shutdown()  # this process joins as a user would, by address, then leaves the cluster running
    try:
        pool = Registry.from_file(REF8, DATA_DIR)
        scheduler = Scheduler({"replay": ReplayBackend()}, executor="ray", ray_address=ray_cluster.address)
        outputs, _ = scheduler.run([Request(pool.experts[0], Prompt("", query_id="70"))], PARAMS)
        assert outputs[0].ok and ray.is_initialized()
        scheduler.close()
        assert not ray.is_initialized()  # left the cluster; the cluster itself goes on
    finally:
        if not ray.is_initialized():
            ray.init(address=ray_cluster.address, namespace="coe", log_to_driver=False)


def eval_args(tmp_path: Path, *extra: str) -> list[str]:
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(str(qid) for qid in range(70, 100)))
    return [
        "eval",
        "--bench",
        "mmlu-pro",
        "--pool",
        str(REF8),
        "--split",
        f"ids:{ids}",
        "--routers",
        "best-single,random,all,oracle",
        "--aggregators",
        "majority,weighted",
        "--seeds",
        "0,1",
        "--limit",
        "20",
        *extra,
    ]


def comparable(summary_file: Path) -> dict:
    summary = json.loads(summary_file.read_text())
    del summary["run_id"]
    for row in summary["results"]:
        del row["wall_s"]
    return summary


def test_eval_on_a_local_ray_instance_gives_the_local_summary_and_leaves_no_process(
    tmp_path: Path, coe_here: Any
) -> None:
    env = {"COE_DATABASE_URL": f"sqlite:///{tmp_path / 'local.db'}", "COE_CACHE_DIR": str(tmp_path)}
    local = coe_here(*eval_args(tmp_path, "--json", str(tmp_path / "local.json")), env=env)
    assert local.returncode == 0, local.stderr
    # a process of its own, as a user runs it: --executor ray with no cluster starts a private one
    command = [sys.executable, "-c", "from coe.cli import main; main()"]
    command += eval_args(tmp_path, "--executor", "ray", "--json", str(tmp_path / "ray.json"))
    environment = {**os.environ, **env, "COE_DATABASE_URL": f"sqlite:///{tmp_path / 'ray.db'}"}
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
        cwd=REPO,
        start_new_session=True,
    ) as run:
        _, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr
    assert comparable(tmp_path / "ray.json") == comparable(tmp_path / "local.json")
    deadline = time.monotonic() + 30
    while (left := session_processes(run.pid)) and time.monotonic() < deadline:
        time.sleep(1)
    assert not left, f"processes of the run still alive: {left}"


def test_a_composition_with_executor_ray_runs_its_experts_on_the_cluster(
    ray_cluster: Any, tmp_path: Path, settings: Any
) -> None:
    pool_file = tmp_path / "two.yaml"
    pool_file.write_text(dump_registry(Registry.from_file(REF8, DATA_DIR).experts[:2]))
    spec = CompositionSpec(pool=str(pool_file), router="all", executor="ray")
    with CompositionBuilder(settings).compose(spec) as composer:
        assert ray_executor(composer.scheduler).kind == "ray"
        (answer,) = composer.ask_batch([Query(id="70", text="(recorded)", choices=tuple("ABCDEFGHIJ"))])
        assert len(answer.expert_answers) == 2 and all(a.error is None and a.text for a in answer.expert_answers)
        assert len(ray_executor(composer.scheduler).actors()) == 2
    assert ray_executor(composer.scheduler).actors() == {}


def test_ask_and_profile_take_the_executor_from_the_command_line(
    ray_cluster: Any, tmp_path: Path, coe_here: Any, weights_cache: Path
) -> None:
    """`coe ask` and `coe profile` with `--executor ray` (this process is joined to the session's
    cluster, which they use as it is) answer what they answer in-process."""
    (tmp_path / "one.yaml").write_text(dump_registry(Registry.from_file(LORA_POOL, DATA_DIR).experts[:1]))
    (tmp_path / "two.yaml").write_text(dump_registry(Registry.from_file(REF8, DATA_DIR).experts[:2]))
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(str(qid) for qid in range(70, 90)))
    outputs: dict[str, list[str]] = {}
    for executor in ("local", "ray"):
        env = {"COE_DATABASE_URL": f"sqlite:///{tmp_path / executor}.db", "COE_CACHE_DIR": str(weights_cache)}
        ask = ("ask", QUESTIONS[0], "--pool", str(tmp_path / "one.yaml"), "--max-tokens", "6", "--json")
        profile = ("profile", "--pool", str(tmp_path / "two.yaml"), "--split", f"ids:{ids}", "--no-annotate")
        runs = [coe_here(*command, "--executor", executor, env=env) for command in (ask, profile)]
        assert all(run.returncode == 0 for run in runs), [run.stderr for run in runs]
        answer = json.loads(runs[0].stdout)
        outputs[executor] = [answer["expert_answers"][0]["text"], runs[1].stdout.split("\n", 1)[1]]
        assert answer["expert_answers"][0]["error"] is None
    assert outputs["ray"] == outputs["local"]
    import ray

    deadline = time.monotonic() + 30  # the commands ended their actors: the model actor's CPU is free again
    while ray.available_resources().get("CPU") != ray.cluster_resources()["CPU"] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray.available_resources().get("CPU") == ray.cluster_resources()["CPU"]


def test_text_sinks_stay_here_and_get_the_whole_texts(on_ray: Any) -> None:
    """A request's text sink (the service's stream) is not sent to the actor; it gets the whole answer."""
    pool = Registry.from_file(REF8, DATA_DIR)
    received: list[str] = []
    requests = [Request(pool.experts[0], Prompt("", query_id="70"), on_text=received.append)]
    requests.append(Request(pool.experts[1], Prompt("", query_id="70")))
    outputs, _ = on_ray().run(requests, PARAMS)
    assert all(o.ok for o in outputs) and received == [outputs[0].text]
