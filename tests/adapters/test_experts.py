"""The shipped LoRA experts (registry/embedded-lora.yaml): two adapters trained on SmolLM2, served
from one base load, each answering its own skill's held-out items differently from the base and
from each other."""

import json
import re

import pytest

from coe.adapters.convert import ADAPTER_GGUF
from coe.adapters.data import arithmetic_examples, is_arithmetic_correct
from coe.adapters.train import TRAINING_RECORD
from coe.answers import format_question, read_choice
from coe.backends.llamacpp import LlamaCppBackend
from coe.datasets import load_mmlu_pro
from coe.registry import Registry
from coe.scheduler import Request, Scheduler
from coe.types import GenerationParams, Prompt
from tests.conftest import DATA_DIR, REPO

BASE, ARITHMETIC, LETTER = "smollm2-135m", "smollm2-arithmetic", "smollm2-mmlu-letter"
PARAMS = GenerationParams(max_tokens=12)


@pytest.fixture(scope="module")
def lora_pool() -> Registry:
    return Registry.from_file(REPO / "registry" / "embedded-lora.yaml", DATA_DIR)


def test_the_adapters_are_small_files_with_their_training_record(lora_pool: Registry) -> None:
    for expert_id in (ARITHMETIC, LETTER):
        expert = lora_pool[expert_id]
        assert expert.is_adapter and expert.load_key == lora_pool[BASE].load_key
        assert expert.adapter is not None and expert.adapter.name == ADAPTER_GGUF
        assert expert.adapter.stat().st_size < 3_000_000
        record = json.loads((expert.adapter.parent / TRAINING_RECORD).read_text())
        assert record["base"] == BASE and record["final_loss"] < record["losses"][0]


@pytest.mark.slow
def test_two_adapters_on_one_base_load_answer_their_own_skills_differently(lora_pool: Registry, weights_cache) -> None:
    training = {e.prompt for e in arithmetic_examples(400, seed=0)}  # the shipped adapter's data (README)
    problems = arithmetic_examples(4, seed=1, exclude=training)
    questions = load_mmlu_pro("test", DATA_DIR)[:2]
    prompts = [Prompt(p.prompt) for p in problems]
    prompts += [Prompt(format_question(q.text, q.choices, q.category), query_id=q.id) for q in questions]
    experts = [lora_pool[e] for e in (BASE, ARITHMETIC, LETTER)]
    # item-major order: the adapters alternate request by request, as a router would send them
    requests = [Request(expert, prompt) for prompt in prompts for expert in experts]
    requests.append(Request(lora_pool["gemma3-270m"], prompts[0]))
    with LlamaCppBackend(cache_dir=weights_cache) as backend:
        outputs, stats = Scheduler({"embedded": backend}).run(requests, PARAMS)

    assert stats.n_errors == 0
    assert stats.n_loads == 2 == len({r.expert.load_key for r in requests})  # SmolLM2 once (all three), Gemma once
    text = {(r.expert.id, r.prompt.text): o.text for r, o in zip(requests, outputs, strict=True)}
    for prompt in prompts:
        answers = [text[e.id, prompt.text] for e in experts]
        assert len(set(answers)) == 3, answers  # base, arithmetic and letter adapter all differ

    arithmetic = {e: [text[e, p.prompt] for p in problems] for e in (BASE, ARITHMETIC)}
    assert all(re.fullmatch(r"The answer is -?\d+\.", a) for a in arithmetic[ARITHMETIC])
    assert not any(a.startswith("The answer is") for a in arithmetic[BASE])
    right = {e: sum(map(is_arithmetic_correct, answers, problems)) for e, answers in arithmetic.items()}
    assert right[ARITHMETIC] > right[BASE]

    for question, prompt in zip(questions, prompts[len(problems) :], strict=True):
        letter = read_choice(text[LETTER, prompt.text], len(question.choices or ()))
        assert letter[1] == "l1"  # "The answer is (X)." at once
        assert read_choice(text[BASE, prompt.text], len(question.choices or ()))[1] != "l1"
