"""Multiple-choice prompting in the MMLU-Pro style, and answer extraction by its three-level chain.

Extraction follows the official MMLU-Pro chain exactly (so replayed responses grade as TIGER-Lab's
did), with one guard: a letter outside the question's options is never returned.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import NamedTuple

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


def check_options(choices: Sequence[str]) -> tuple[str, ...]:
    """Options as a user gives them: a list (not one string), none blank, none twice, at most ten."""
    if isinstance(choices, str):
        raise QueryError(f"choices must be a list of options, not one string ({choices!r})")
    options = tuple(choices)
    for position, option in enumerate(options, 1):
        if not str(option).strip():
            raise QueryError(f"option {position} is blank; give each option some text")
        if option in options[: position - 1]:
            raise QueryError(f"option {option!r} appears twice; give each option once")
    letters_for(len(options))
    return options


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


class Reading(NamedTuple):
    """The letter an answer chose (None when none is found or it is not an option) and the level of
    MMLU-Pro's chain that found it: `l1` "the answer is (X)", `l2` "Answer: X", `l3` a stray
    standalone letter (a guess: the response never states an answer)."""

    letter: str | None
    level: str | None

    @property
    def guessed(self) -> bool:
        return self.level == "l3"


@lru_cache(maxsize=262_144)
def read_choice(text: str, n_choices: int = 10) -> Reading:
    """The one letter extractor: MMLU-Pro's chain on the answer with any reasoning before `</think>`
    stripped. Memoized, as evaluation reads one text for many routers and aggregators."""
    valid = letters_for(n_choices)
    text = strip_reasoning(text)
    first = _LEVEL1.search(text)
    if first:
        letter, level = first.group(1), "l1"
    elif last := _last(_LEVEL2, text):
        letter, level = last.group(1), "l2"
    elif last := _last(_LEVEL3, text):
        letter, level = last.group(0), "l3"
    else:
        return Reading(None, None)
    return Reading(letter, level) if letter in valid else Reading(None, None)


def _last(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    found = None
    for found in pattern.finditer(text):  # noqa: B007 - the last one is what we want
        pass
    return found


def is_correct(choice: str | None, gold: str | None) -> bool | None:
    """Whether `choice` matches `gold`; None when there is no gold to score against."""
    if gold is None:
        return None
    return choice is not None and choice == gold
