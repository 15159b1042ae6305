"""Multiple-choice prompting in the MMLU-Pro style, and answer extraction by its three-level chain.

Extraction follows the official MMLU-Pro chain exactly (so replayed responses grade as TIGER-Lab's
did), with one guard: a letter outside the question's options is never returned.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from coe.errors import QueryError
from coe.schema import Query
from coe.types import Prompt

LETTERS = "ABCDEFGHIJ"

_LEVEL1 = re.compile(r"answer is \(?([A-J])\)?")
_LEVEL2 = re.compile(r".*[aA]nswer:\s*([A-J])", re.DOTALL)
_LEVEL3 = re.compile(r"\b[A-J]\b(?!.*\b[A-J]\b)", re.DOTALL)
_THINK_END = "</think>"

INSTRUCTION = (
    "The following is a multiple choice question{about}. Think step by step and then finish your "
    'answer with "the answer is (X)" where X is the correct letter choice.'
)


def letters_for(n_choices: int) -> str:
    """The option letters for a question with `n_choices` options (A–J)."""
    if not 1 <= n_choices <= len(LETTERS):
        raise QueryError(f"a multiple-choice question needs 1 to 10 options, got {n_choices}")
    return LETTERS[:n_choices]


def format_options(choices: Sequence[str]) -> str:
    return "\n".join(f"{letter}. {choice}" for letter, choice in zip(letters_for(len(choices)), choices, strict=True))


def format_question(question: str, choices: Sequence[str] | None = None, category: str | None = None) -> str:
    """The user prompt: MMLU-Pro's CoT instruction, the question, lettered options, a CoT cue."""
    if not choices:
        return question
    about = f" about {category}" if category else ""
    return (
        f"{INSTRUCTION.format(about=about)}\n\nQuestion: {question}\nOptions:\n{format_options(choices)}\n"
        "Answer: Let's think step by step."
    )


def question_prompt(query: Query) -> Prompt:
    """What every expert is asked for a query; keyed by the query id so generations can be cached."""
    return Prompt(text=format_question(query.text, query.choices, query.category), query_id=query.id)


def strip_reasoning(text: str) -> str:
    """Drop a reasoning model's thinking: everything up to the last `</think>`."""
    return text.rsplit(_THINK_END, 1)[-1].strip() if _THINK_END in text else text


def extract_choice_with_level(text: str, n_choices: int = 10) -> tuple[str | None, str | None]:
    """The chosen letter and the chain level that found it (`l1`, `l2`, `l3`), or (None, None)."""
    valid = letters_for(n_choices)
    for level, found in (
        ("l1", _LEVEL1.search(text)),
        ("l2", _LEVEL2.search(text)),
        ("l3", _LEVEL3.search(text)),
    ):
        if found:
            letter = found.group(1) if found.groups() else found.group(0)
            return (letter, level) if letter in valid else (None, None)
    return None, None


def extract_choice(text: str, n_choices: int = 10) -> str | None:
    """The letter an answer chose, by MMLU-Pro's chain; None when none is found or it is not an option."""
    return extract_choice_with_level(text, n_choices)[0]


def is_correct(choice: str | None, gold: str | None) -> bool | None:
    """Whether `choice` matches `gold`; None when there is no gold to score against."""
    if gold is None:
        return None
    return choice is not None and choice == gold
