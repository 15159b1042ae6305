"""The composing side's batch loop, driven directly through its inbox: what becomes a batch, what a
drop takes out, and that closing still answers everything asked."""

import json
import pickle
import queue
from typing import Any

from coe.compose import CompositionBuilder, CompositionSpec
from coe.schema import Query
from coe.service import ServiceConfig
from coe.service.batches import Asked, BatchLoop, QueueInbox, prepared
from coe.service.wire import Message
from coe.settings import Settings
from coe.types import GenerationParams
from tests.service.conftest import REF8

SPEC = CompositionSpec(pool=REF8, router="knn", profile="priors", k=3, aggregator="weighted")


def _run(settings: Settings, messages: list[Message], *, max_batch: int) -> list[Message]:
    """Every message the loop sends back, given these (then a close) already waiting in its inbox."""
    compositions = prepared(CompositionBuilder(settings), ServiceConfig(composition=SPEC))
    inbox: queue.SimpleQueue[Message] = queue.SimpleQueue()
    for message in [("spec", "coe", SPEC), *messages, ("close",)]:
        inbox.put(message)
    sent: list[Message] = []
    BatchLoop(compositions, QueueInbox(inbox), sent.append, max_batch=max_batch, window_s=0.0).run()
    return sent


def _asked(ticket: int, query: Query, **changes: Any) -> Message:
    sampling = (SPEC.generation.max_tokens, 0.0, 0, ())
    fields = dict(spec_key="coe", free_form=False, sampling=sampling, experts=None, stream=False, avoid={})
    question = dict(query_id=query.id, text=query.text, choices=query.choices)
    return ("ask", Asked(ticket, **{**fields, **question, **changes}))


def test_a_batch_takes_what_waits_up_to_max_batch_in_order_and_skips_what_was_dropped(
    module_settings: Settings, mmlu_test: list[Query]
) -> None:
    questions = mmlu_test[:5]
    messages = [_asked(i, q) for i, q in enumerate(questions)] + [("drop", 1)]
    sent = _run(module_settings, messages, max_batch=3)
    assert [m for m in sent if m[0] == "started"] == [("started", [0, 2, 3]), ("started", [4])]
    done = [m for m in sent if m[0] == "done"]
    assert [m[1] for m in done] == [[0, 2, 3], [4]]
    assert [json.loads(b"{" + a.rendered + b"}")["query_id"] for m in done for a in m[2]] == [
        questions[i].id for i in (0, 2, 3, 4)
    ]
    assert sent[-1] == ("closed",)


def test_each_group_of_a_batch_is_composed_apart_with_its_own_settings(
    module_settings: Settings, mmlu_test: list[Query]
) -> None:
    first, second = mmlu_test[:2]
    only = frozenset({"gemini-1.5-flash-002"})
    sent = _run(module_settings, [_asked(0, first), _asked(1, second, experts=only)], max_batch=8)
    assert [m for m in sent if m[0] == "started"] == [("started", [0, 1])]
    answers = {m[1][0]: m[2][0] for m in sent if m[0] == "done"}
    assert len(answers[0].calls) == 3
    assert answers[1].answered == ["gemini-1.5-flash-002"]


def test_an_asked_request_crosses_to_the_composing_process_whole() -> None:
    sampling = (7, 0.5, 3, ("\n\n", "END"))
    asked = Asked(4, "coe", True, "q-4", "What is 2 + 2?", ("3", "4"), sampling, frozenset({"a"}), True, {})
    copy = pickle.loads(pickle.dumps(("ask", asked), protocol=pickle.HIGHEST_PROTOCOL))[1]
    assert copy == asked
    assert copy.params == GenerationParams(max_tokens=7, temperature=0.5, seed=3, stop=("\n\n", "END"))
