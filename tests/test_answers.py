import pytest

from coe.answers import format_question, is_correct, read_choice, strip_reasoning
from coe.errors import QueryError


def test_format_question_letters_every_option_and_asks_for_the_mmlu_pro_ending() -> None:
    prompt = format_question("2+2?", ["3", "4", "5"], category="math")
    assert "about math" in prompt
    assert "A. 3\nB. 4\nC. 5" in prompt
    assert "the answer is (X)" in prompt
    assert prompt.endswith("Answer: Let's think step by step.")


def test_open_question_is_sent_as_is() -> None:
    assert format_question("Tell me a joke.") == "Tell me a joke."


def test_more_than_ten_options_is_a_query_error() -> None:
    with pytest.raises(QueryError, match="1 to 10 options, got 11"):
        format_question("?", [str(i) for i in range(11)])


@pytest.mark.parametrize(
    ("text", "n", "expected", "level"),
    [
        ("so the answer is (C).", 10, "C", "l1"),
        ("the answer is D", 4, "D", "l1"),
        ("Answer: B", 4, "B", "l2"),
        ("answer:   J", 10, "J", "l2"),
        ("I think B is wrong, C is right", 4, "C", "l3"),
        ("nothing to see here", 10, None, None),
        ("", 10, None, None),
    ],
)
def test_extraction_follows_the_three_level_chain(text: str, n: int, expected: str | None, level: str | None) -> None:
    assert read_choice(text, n) == (expected, level)


def test_first_level_one_match_wins_when_several_candidates() -> None:
    assert read_choice("the answer is (A) ... on reflection the answer is (B)", 4).letter == "A"


def test_lowercase_letters_are_not_choices() -> None:
    assert read_choice("the answer is (b)", 4).letter is None
    assert read_choice("answer: c", 4).letter is None


def test_a_letter_outside_the_options_is_never_returned() -> None:
    assert read_choice("the answer is (E)", 4).letter is None
    assert read_choice("Answer: G", 3).letter is None
    assert read_choice("maybe H", 5).letter is None


def test_reasoning_before_think_end_is_dropped() -> None:
    assert strip_reasoning("<think>the answer is (A)</think>the answer is (B)") == "the answer is (B)"
    assert strip_reasoning("plain") == "plain"


def test_scoring() -> None:
    assert is_correct("A", "A") is True
    assert is_correct(None, "A") is False
    assert is_correct("A", None) is None
