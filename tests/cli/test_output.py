"""Text from models, files, users and errors is printed as data: never parsed as Rich markup or emoji codes."""

from hypothesis import given, settings
from hypothesis import strategies as st

from coe.cli.ask import print_answer
from coe.cli.common import console, out, print_error
from coe.cli.stored import print_trace
from coe.errors import RegistryError
from coe.schema import Answer, ExpertAnswer, ExpertChoice, Route
from coe.store import ItemTrace
from coe.types import Failure

PRINTABLE = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp", "Mn", "Me")), min_size=1, max_size=60)
NASTY = [
    "[/INST]",
    "[citation needed]",
    "[bold]x[/bold]",
    ":smile: :thumbs_up:",
    "[/x].yaml",
    "[link=http://a]b",
    "\\[x]",
]


def squashed(text: str) -> str:
    return " ".join(text.split())


def answer_of(text: str, error: str, reason: str) -> Answer:
    route = Route(query_id="q", experts=(ExpertChoice(expert="a", score=1.0),), reason=reason, router="all")
    return Answer(
        query_id="q",
        answer=text,
        choice=None,
        experts=("a", "b"),
        expert_answers=(
            ExpertAnswer(expert="a", text=text),
            ExpertAnswer(expert="b", text="", error=Failure(error, kind="server", retryable=True, expert="b")),
        ),
        route=route,
        aggregator="majority",
    )


@settings(max_examples=150, deadline=None)
@given(text=PRINTABLE | st.sampled_from(NASTY), error=PRINTABLE | st.sampled_from(NASTY), reason=PRINTABLE)
def test_an_answer_prints_model_text_and_errors_verbatim(text: str, error: str, reason: str) -> None:
    with out.capture() as captured:
        print_answer(answer_of(text, error, reason))
    printed = squashed(captured.get())
    assert squashed(text) in printed and squashed(error) in printed and squashed(reason) in printed


@settings(max_examples=150, deadline=None)
@given(message=PRINTABLE | st.sampled_from(NASTY))
def test_an_error_message_prints_verbatim(message: str) -> None:
    with console.capture() as captured:
        print_error(RegistryError(message))
    assert squashed(captured.get()) == squashed(f"error: {message}")


@settings(max_examples=100, deadline=None)
@given(text=PRINTABLE | st.sampled_from(NASTY), reason=PRINTABLE | st.sampled_from(NASTY))
def test_a_trace_prints_any_text_without_failing(text: str, reason: str) -> None:
    trace = ItemTrace(
        routes=[(0, "knn", [("a", 0.5)], reason)],
        generations=[("a", "B", text, None), ("b", None, None, text)],
        results=[(0, "knn", "majority", "B", True)],
    )
    with out.capture() as captured:
        print_trace("17", trace)
    assert "routes of item 17" in captured.get()


def test_markup_lookalikes_survive_a_trace_table() -> None:
    trace = ItemTrace(
        routes=[(0, "knn", [("a", 0.5)], "[citation needed]")],
        generations=[("a", "B", "[/INST] the answer is (B)", None)],
        results=[(0, "knn", "majority", "B", True)],
    )
    with out.capture() as captured:
        print_trace("17", trace)
    assert "[citation needed]" in captured.get() and "[/INST] the answer is (B)" in captured.get()
