"""An answer rendered on the composing side for the HTTP side: what the response's `coe` object shows
and what the HTTP side reads come out of the answer whole."""

import json

from coe.schema import Answer, ExpertAnswer, ExpertChoice, Fallback, Route
from coe.service.served import Call, coe_object, served, with_coe
from coe.types import Failure

TIMEOUT = Failure("no answer in 5 s", kind="timeout", retryable=True, expert="c")


def _answer(completion_tokens: int) -> Answer:
    route = Route(
        query_id="q7",
        experts=(ExpertChoice(expert="a", score=0.9), ExpertChoice(expert="b", score=float("-inf"))),
        reason="nearest items",
        router="knn",
        fallbacks=(ExpertChoice(expert="c", score=0.1),),
    )
    return Answer(
        query_id="q7",
        answer="The answer is (B).",
        choice="B",
        experts=("a", "b"),
        expert_answers=(
            ExpertAnswer(expert="a", text="The answer is (B).", choice="B", n_completion_tokens=completion_tokens),
            ExpertAnswer(expert="b", text="", error=TIMEOUT, latency_s=5.0),
        ),
        route=route,
        aggregator="weighted",
        votes={"B": 0.9},
        n_prompt_tokens=11,
        n_completion_tokens=completion_tokens,
        cost_usd=0.002,
        timings={"route_s": 0.001, "generate_s": 0.5},
        fallbacks=(Fallback(expert="c", error=TIMEOUT, replacement="b"),),
    )


def test_an_answer_renders_the_coe_object_and_keeps_what_the_http_side_reads() -> None:
    answer = served(_answer(completion_tokens=5), max_tokens=64)
    coe = json.loads(coe_object(answer, "chatcmpl-1", 4, {"queue_s": 0.25, "request_s": 0.8}))
    assert coe["request_id"] == "chatcmpl-1" and coe["query_id"] == "q7" and coe["router"] == "knn"
    assert coe["route"]["experts"] == [{"expert": "a", "score": 0.9}, {"expert": "b", "score": None}]
    assert [e["error"] for e in coe["experts"]] == [
        None,
        {"kind": "timeout", "message": TIMEOUT.message, "retryable": True},
    ]
    assert coe["fallbacks"] == [
        {"expert": "c", "replacement": "b", "kind": "timeout", "message": TIMEOUT.message, "retryable": True}
    ]
    assert coe["batch_size"] == 4 and coe["timings"] == {
        "route_s": 0.001,
        "generate_s": 0.5,
        "queue_s": 0.25,
        "request_s": 0.8,
    }
    assert answer.answered == ["a"] and answer.calls[1] == Call("b", 5.0, TIMEOUT)
    assert answer.failures == [TIMEOUT, TIMEOUT] and answer.generation_s == 0.5 and not answer.cut
    assert served(_answer(completion_tokens=64), max_tokens=64).cut
    body = json.loads(with_coe({"id": "chatcmpl-1", "choices": []}, coe_object(answer, "chatcmpl-1", 4, {})))
    assert list(body) == ["id", "choices", "coe"] and body["coe"]["votes"] == {"B": 0.9}
