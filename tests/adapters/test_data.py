"""Skill datasets: deterministic, correct, disjoint where held out; bad files fail naming the line."""

import random
from pathlib import Path

import pytest

from coe.adapters.data import (
    Example,
    arithmetic_examples,
    arithmetic_problem,
    is_arithmetic_correct,
    letter_answer_examples,
    read_examples,
    write_examples,
)
from coe.answers import format_question, read_choice
from coe.datasets import load_mmlu_pro
from coe.errors import DatasetError
from tests.conftest import DATA_DIR


def test_arithmetic_is_deterministic_correct_and_distinct() -> None:
    examples = arithmetic_examples(300, seed=0)
    assert examples == arithmetic_examples(300, seed=0)
    assert len({e.prompt for e in examples}) == 300
    for example in examples:
        left, operator, right = example.prompt.removeprefix("What is ").removesuffix("?").split()
        value = {"+": int(left) + int(right), "-": int(left) - int(right), "*": int(left) * int(right)}[operator]
        assert example.response == f"The answer is {value}."


def test_held_out_arithmetic_excludes_the_training_prompts() -> None:
    train = arithmetic_examples(400, seed=0)
    held_out = arithmetic_examples(100, seed=1, exclude={e.prompt for e in train})
    assert not {e.prompt for e in held_out} & {e.prompt for e in train}


def test_arithmetic_problems_cover_all_three_operators() -> None:
    rng = random.Random(0)
    operators = {arithmetic_problem(rng)[0].split()[3] for _ in range(50)}
    assert operators == {"+", "-", "*"}


def test_letter_answers_use_the_composer_prompt_and_the_gold_letter() -> None:
    queries = load_mmlu_pro("validation", DATA_DIR)
    examples = letter_answer_examples(queries)
    assert len(examples) == 70
    first = queries[0]
    assert examples[0].prompt == format_question(first.text, first.choices, first.category)
    assert read_choice(examples[0].response) == (first.gold, "l1")


def test_examples_round_trip_through_json_lines(tmp_path: Path) -> None:
    examples = [Example("Q: ünïcode?", "A."), Example("two\nlines", "The answer is 3.")]
    assert write_examples(tmp_path / "d.jsonl", examples) == 2
    assert read_examples(tmp_path / "d.jsonl") == examples


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"prompt": "x", "response": "y"}\n{"prompt": "x"}\n', r"d\.jsonl:2: expected a JSON object"),
        ("not json\n", r"d\.jsonl:1: expected a JSON object"),
        ('{"prompt": "x", "response": ""}\n', r"d\.jsonl:1: .*non-empty"),
        ("\n", r"holds no examples; build one with `coe adapters data"),
    ],
)
def test_bad_training_files_name_the_line(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "d.jsonl").write_text(content)
    with pytest.raises(DatasetError, match=message):
        read_examples(tmp_path / "d.jsonl")


def test_a_missing_training_file_says_how_to_build_one(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="coe adapters data --help"):
        read_examples(tmp_path / "absent.jsonl")


@pytest.mark.parametrize(
    ("answer", "correct"),
    [("The answer is 100.", True), ("82 + 18 = 100", True), ("The answer is 90.", False), ("To add", False)],
)
def test_an_arithmetic_answer_is_scored_by_its_last_integer(answer: str, correct: bool) -> None:
    assert is_arithmetic_correct(answer, Example("What is 82 + 18?", "The answer is 100.")) is correct
