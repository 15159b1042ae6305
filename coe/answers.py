"""Multiple-choice prompting in the MMLU-Pro style, and answer extraction by its three-level chain.

Extraction follows the official MMLU-Pro chain exactly (so replayed responses grade as TIGER-Lab's
did), with one guard: a letter outside the question's options is never returned.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

from coe.errors import QueryError
from coe.schema import Query
from coe.types import Prompt

LETTERS = "ABCDEFGHIJ"

_LEVEL1 = re.compile(r"answer is \(?([A-J])\)?")
# MMLU-Pro's level 2 is `.*[aA]nswer:\s*([A-J])` (DOTALL, greedy: the last place it matches) and level 3
# `\b[A-J]\b(?!.*\b[A-J]\b)` (the last standalone letter). Both backtrack quadratically on long
# responses (1.6 ms each here); the last match of these linear patterns is the same answer.
_LEVEL2 = re.compile(r"(?=[aA]nswer:\s*([A-J]))")
_LEVEL3 = re.compile(r"\b[A-J]\b")
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
    first = _LEVEL1.search(text)
    if first:
        letter, level = first.group(1), "l1"
    elif last := _last(_LEVEL2, text):
        letter, level = last.group(1), "l2"
    elif last := _last(_LEVEL3, text):
        letter, level = last.group(0), "l3"
    else:
        return None, None
    return (letter, level) if letter in valid else (None, None)


def _last(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    found = None
    for found in pattern.finditer(text):  # noqa: B007 - the last one is what we want
        pass
    return found


def extract_choice(text: str, n_choices: int = 10) -> str | None:
    """The letter an answer chose, by MMLU-Pro's chain; None when none is found or it is not an option."""
    return extract_choice_with_level(text, n_choices)[0]


def is_correct(choice: str | None, gold: str | None) -> bool | None:
    """Whether `choice` matches `gold`; None when there is no gold to score against."""
    if gold is None:
        return None
    return choice is not None and choice == gold


@lru_cache(maxsize=262_144)
def read_choice(text: str, n_choices: int) -> tuple[str | None, bool]:
    """The letter an answer chose (reasoning stripped) and whether it was only guessed: found by the
    chain's last resort (a standalone letter) because the response never states an answer. Memoized,
    as evaluation reads one text for many routers and aggregators."""
    letter, level = extract_choice_with_level(strip_reasoning(text), n_choices)
    return letter, level == "l3"


def choice_of(text: str, n_choices: int) -> str | None:
    """The letter an answer text chose, reasoning stripped."""
    return read_choice(text, n_choices)[0]
