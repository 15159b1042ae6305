"""What the shipped LoRA adapters do: SmolLM2 and its two adapters on each adapter's own skill.

    .venv/bin/python -m benchmarks.adapters [--items 40] [--max-tokens 16]

Held-out items only: arithmetic problems from another seed than the training set (and never a
training prompt); MMLU-Pro *test* questions (the letter adapter trained on the validation split).
All three experts run from one SmolLM2 load (the scheduler's batched mode), greedy. Scores:
arithmetic is right when the last integer of the answer is the value; a multiple-choice answer is
right when MMLU-Pro's extraction chain finds the gold letter, and "formatted" when it says
"the answer is (X)" (the chain's first level).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from benchmarks.embedded_lora import pool_and_questions
from coe.adapters.data import arithmetic_examples, is_arithmetic_correct
from coe.answers import format_question, read_choice
from coe.backends.llamacpp import LlamaCppBackend
from coe.scheduler import Request, Scheduler
from coe.types import GenerationParams, Prompt

EXPERTS = ("smollm2-135m", "smollm2-arithmetic", "smollm2-mmlu-letter")
TRAINING_ARITHMETIC = {"n": 400, "seed": 0}  # what `coe adapters data arithmetic` wrote (README)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=40)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()
    settings, pool, questions = pool_and_questions(args.items, seed=0)
    training = {e.prompt for e in arithmetic_examples(**TRAINING_ARITHMETIC)}
    problems = arithmetic_examples(args.items, seed=1, exclude=training)
    prompts = [Prompt(p.prompt) for p in problems] + [
        Prompt(format_question(q.text, q.choices, q.category), query_id=q.id) for q in questions
    ]
    requests = [Request(pool[expert], prompt) for expert in EXPERTS for prompt in prompts]
    with LlamaCppBackend(cache_dir=settings.cache_dir) as backend:
        outputs, stats = Scheduler({"embedded": backend}).run(requests, GenerationParams(max_tokens=args.max_tokens))
    texts = {
        expert: [o.text for o in outputs[i * len(prompts) : (i + 1) * len(prompts)]] for i, expert in enumerate(EXPERTS)
    }

    print(f"command: {Path(sys.executable).name} -m benchmarks.adapters {' '.join(sys.argv[1:])}".rstrip())
    print(
        f"{len(problems)} held-out arithmetic problems, {len(questions)} MMLU-Pro test questions, "
        f"max_tokens={args.max_tokens}, greedy; {stats.n_loads} model load(s) for {stats.n_requests} requests"
    )
    print(f"{'expert':<22} {'arith right':>11} {'mc formatted':>12} {'mc right':>8} {'differs from base':>17}")
    for expert in EXPERTS:
        arithmetic = texts[expert][: len(problems)]
        letters = [
            read_choice(t, len(q.choices or ())) for t, q in zip(texts[expert][len(problems) :], questions, strict=True)
        ]
        right = np.mean(list(map(is_arithmetic_correct, arithmetic, problems)))
        formatted = np.mean([level == "l1" for _, level in letters])
        correct = np.mean([letter == q.gold for (letter, _), q in zip(letters, questions, strict=True)])
        differs = np.mean([a != b for a, b in zip(texts[expert], texts[EXPERTS[0]], strict=True)])
        print(f"{expert:<22} {right:>11.0%} {formatted:>12.0%} {correct:>8.0%} {differs:>17.0%}")
    print("first items:")
    for index, shown in ((0, problems[0].prompt), (len(problems), questions[0].text)):
        print(f"  {shown[:70]!r}")
        for expert in EXPERTS:
            print(f"    {expert:<22} {texts[expert][index]!r}")


if __name__ == "__main__":
    main()
