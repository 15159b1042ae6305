"""Compare: one question, several routers side by side, each expert's answer and the fused answers."""

from __future__ import annotations

import random
from functools import partial

import pandas as pd
import streamlit as st

from coe.answers import LETTERS
from coe.compose import ProfileSource, SplitProfile, StoredProfile
from coe.errors import CoeError
from coe.profile import profile_name
from coe.registry import Registry
from coe.routers import ROUTERS
from coe.schema import ExpertAnswer, Query
from ui.comparison import Comparison, ComparisonRequest, run_comparison, typed_query
from ui.display import letter_badge, plain, usd, verdict
from ui.jobs import Job
from ui.workbench import Workbench, current_pool, keep, mmlu_pro, workbench

# The oracle needs every expert graded on the question first: an evaluation baseline, not a column.
ROUTER_CHOICES = [name for name in ROUTERS if name != "oracle"]
AGGREGATOR_CHOICES = ["majority", "weighted", "llm"]
SPLITS = ["test", "validation"]
ANY_CATEGORY = "any category"


def render() -> None:
    bench = workbench()
    pool = current_pool(bench)
    try:
        registry = bench.pool(pool)
        profiles = profile_options(bench, registry)
    except CoeError as error:
        st.error(f"Pool {pool!r} cannot be used: {error}")
        return
    _defaults(bench, pool, registry, profiles)
    st.header("Compare routers on one question")
    question, composition = st.columns([3, 2], gap="large")
    with question:
        query = _question_input(bench)
    with composition:
        _composition_input(registry, profiles)
    _run_controls(bench, pool, registry, query, profiles)
    comparison = st.session_state.get("comparison")
    if comparison is not None:
        show_comparison(comparison)


def profile_options(bench: Workbench, registry: Registry) -> dict[str, ProfileSource]:
    """What routers can fit on for this pool: a measured profile where one exists or is cheap."""
    options: dict[str, ProfileSource] = {}
    if bench.is_recorded(registry):
        options["MMLU-Pro random:1400:0 (measured once, then stored)"] = SplitProfile(bench="mmlu-pro")
    for record in bench.covering_profiles(registry):
        options[f"stored #{record.id}: {profile_name(record)} ({record.created_at:%Y-%m-%d})"] = StoredProfile(
            stored=record.id
        )
    options["declared priors (no profile)"] = "priors"
    return options


def _defaults(bench: Workbench, pool: str, registry: Registry, profiles: dict[str, ProfileSource]) -> None:
    """Sensible first values (a link's query parameters first: `?routers=knn,all&k=2&id=70`), reset
    when the pool changes."""
    params = st.query_params
    measured = next(iter(profiles.values())) != "priors"
    routers = ["knn", "best-single", "all"] if measured else ["best-single", "all"]
    if st.session_state.get("compare_pool") != pool:
        for key in ("routers", "k", "profile", "max_tokens"):
            st.session_state.pop(key, None)
        st.session_state["compare_pool"] = pool
    k = params.get("k", "3")
    keep(
        source="MMLU-Pro",
        split=params.get("split") if params.get("split") in SPLITS else "test",
        category=ANY_CATEGORY,
        item_id=params.get("id", ""),
        typed_text="",
        typed_choices="",
        typed_gold="(none)",
        routers=[r for r in params.get("routers", ",".join(routers)).split(",") if r in ROUTER_CHOICES],
        aggregators=[a for a in params.get("aggregators", "majority,weighted").split(",") if a in AGGREGATOR_CHOICES],
        k=max(1, min(int(k) if k.isdigit() else 3, len(registry))),
        profile=next(iter(profiles)),
        max_tokens=512 if bench.is_recorded(registry) else 384,  # 512: what `coe eval` profiles with
    )
    if st.session_state["profile"] not in profiles:  # a profile stored since, or removed
        st.session_state["profile"] = next(iter(profiles))
    if not st.session_state["item_id"]:
        draw_question(bench)


# --------------------------------------------------------------------------- the question


def _items(bench: Workbench) -> list[Query]:
    items = mmlu_pro(st.session_state["split"], bench.settings.data_dir)
    category = st.session_state["category"]
    return [q for q in items if category == ANY_CATEGORY or q.category == category]


def draw_question(bench: Workbench) -> None:
    """A random MMLU-Pro question of the chosen split and category (a callback: runs before the page)."""
    try:
        items = _items(bench)
    except CoeError:
        return  # the question panel says what is missing
    draws = st.session_state.get("draws", 0)
    st.session_state["draws"] = draws + 1
    if items:
        st.session_state["item_id"] = random.Random(draws).choice(items).id


def _question_input(bench: Workbench) -> Query | None:
    st.segmented_control("Question", ["MMLU-Pro", "Your question"], key="source", required=True)
    if st.session_state["source"] == "Your question":
        return _typed_question()
    try:
        all_items = mmlu_pro(st.session_state["split"], bench.settings.data_dir)
    except CoeError as error:
        st.error(f"MMLU-Pro is not available: {error}")
        return None
    categories = [ANY_CATEGORY, *sorted({q.category or "" for q in all_items})]
    split, category, item, draw = st.columns([2, 3, 2, 2], vertical_alignment="bottom")
    split.selectbox("Split", SPLITS, key="split", on_change=draw_question, args=(bench,))
    category.selectbox("Category", categories, key="category", on_change=draw_question, args=(bench,))
    item.text_input("Question id", key="item_id")
    draw.button("Draw another", on_click=draw_question, args=(bench,), width="stretch")
    by_id = {q.id: q for q in all_items}
    query = by_id.get(st.session_state["item_id"].strip())
    if query is None:
        st.error(
            f"No MMLU-Pro {st.session_state['split']} question has id {st.session_state['item_id']!r}: "
            "type another id or press Draw another."
        )
        return None
    with st.container(border=True):
        st.caption(f"MMLU-Pro {st.session_state['split']} · id {query.id} · {query.category}")
        st.markdown(plain(query.text))
        st.markdown(
            "\n".join(f"- **{letter}.** {plain(c)}" for letter, c in zip(LETTERS, query.choices or (), strict=False))
        )
        st.caption(f"gold answer: {query.gold}")
    return query


def _typed_question() -> Query | None:
    st.text_area("Your question", key="typed_text", height=100, placeholder="Which planet is known as the Red Planet?")
    st.text_area(
        "Choices, one per line (optional: leave empty for an open question)",
        key="typed_choices",
        height=100,
        placeholder="Venus\nMars\nJupiter",
    )
    choices = [line.strip() for line in st.session_state["typed_choices"].splitlines() if line.strip()]
    golds = ["(none)", *LETTERS[: min(len(choices), len(LETTERS))]]
    if st.session_state["typed_gold"] not in golds:  # fewer choices than before
        st.session_state["typed_gold"] = "(none)"
    st.selectbox("Correct answer (optional)", golds, key="typed_gold")
    text = st.session_state["typed_text"].strip()
    if not text:
        return None
    if len(choices) == 1 or len(choices) > len(LETTERS):
        return None
    gold = st.session_state["typed_gold"]
    return typed_query(text, choices, None if gold == "(none)" else gold)


# --------------------------------------------------------------------------- the composition


def _composition_input(registry: Registry, profiles: dict[str, ProfileSource]) -> None:
    st.multiselect(
        "Routers (one column each)", ROUTER_CHOICES, key="routers", help="Each router is fitted once and cached."
    )
    st.multiselect("Aggregators", AGGREGATOR_CHOICES, key="aggregators", help="How each column fuses its experts.")
    k, tokens = st.columns(2)
    k.number_input("k: experts per question", min_value=1, max_value=len(registry), key="k")
    tokens.number_input("Max tokens per answer", min_value=16, max_value=4096, step=64, key="max_tokens")
    st.selectbox(
        "Profile the routers fit on",
        list(profiles),
        key="profile",
        help="Measured profiles come from `coe profile` / `coe eval`; priors are the registry's declared skills.",
    )


# --------------------------------------------------------------------------- running


def _problems(query: Query | None) -> list[str]:
    """What stops a comparison, in plain words."""
    problems = []
    if query is None:
        if st.session_state["source"] == "Your question":
            choices = [line for line in st.session_state["typed_choices"].splitlines() if line.strip()]
            if not st.session_state["typed_text"].strip():
                problems.append("Type a question first (or draw one from MMLU-Pro).")
            elif len(choices) == 1:
                problems.append("Give at least two choices, or none for an open question.")
            else:
                problems.append(f"At most {len(LETTERS)} choices (letters A–J); this question has {len(choices)}.")
        else:
            problems.append("Pick an MMLU-Pro question first.")
    if not st.session_state["routers"]:
        problems.append("Pick at least one router.")
    if not st.session_state["aggregators"]:
        problems.append("Pick at least one aggregator.")
    return problems


def _run_controls(
    bench: Workbench, pool: str, registry: Registry, query: Query | None, profiles: dict[str, ProfileSource]
) -> None:
    job: Job[Comparison] | None = st.session_state.get("job")
    running = job is not None and job.running
    if st.button("Compare", type="primary", disabled=running):
        problems = _problems(query)
        for problem in problems:
            st.error(problem)
        if not problems and query is not None:
            request = ComparisonRequest(
                pool=pool,
                query=query,
                routers=tuple(st.session_state["routers"]),
                aggregators=tuple(st.session_state["aggregators"]),
                k=int(st.session_state["k"]),
                profile=profiles[st.session_state["profile"]],
                max_tokens=int(st.session_state["max_tokens"]),
            )
            job = Job(partial(run_comparison, bench, request)).start()
            st.session_state["job"] = job
            if bench.is_recorded(registry) and not query.id.isdigit():
                st.warning(
                    "This pool answers from recorded responses, which exist only for MMLU-Pro test questions: "
                    "each expert will say it has no recorded answer."
                )
    if job is None:
        return
    if job.running:
        cancel, bar = st.empty(), st.empty()
        cancel.button("Cancel", on_click=job.cancel)
        while job.running and not job.wait(0.25):
            counted = f" ({job.done}/{job.total})" if job.total > 1 else ""
            bar.progress(job.fraction, text=job.description + counted)
        cancel.empty()
        bar.empty()
    if job.status == "done":
        st.session_state["comparison"] = job.result
        del st.session_state["job"]
    elif job.status == "cancelled":
        st.warning("Comparison cancelled. Change anything and compare again.")
    elif job.status == "failed":
        error = job.error
        st.error(str(error) if isinstance(error, CoeError) else f"The comparison failed: {error!r}")


# --------------------------------------------------------------------------- results


def show_comparison(comparison: Comparison) -> None:
    request = comparison.request
    query = request.query
    st.subheader("Result")
    st.caption(
        f"Question {query.id} on pool {request.pool} · {len(request.routers)} routers × "
        f"{len(request.aggregators)} aggregators · {comparison.n_generated} expert answers generated once "
        f"for all columns · {comparison.wall_s:.1f} s"
    )
    st.dataframe(_fused_table(comparison))
    per_row = 3
    for start in range(0, len(request.routers), per_row):
        columns = st.columns(per_row)
        for column, router in zip(columns, request.routers[start : start + per_row], strict=False):
            with column, st.container(border=True):
                _router_column(comparison, router)


def _fused_table(comparison: Comparison) -> pd.DataFrame:
    """Router × aggregator: the fused answer (with right/wrong where the question has a gold answer)."""
    request = comparison.request
    rows = []
    for router in request.routers:
        row: dict[str, str] = {"router": router}
        for aggregator in request.aggregators:
            answer = comparison.answer(router, aggregator)
            shown = answer.choice or _short(answer.answer) or "–"
            mark = "" if answer.correct is None else (" ✓" if answer.correct else " ✗")
            row[aggregator] = shown + mark
        row["experts"] = ", ".join(comparison.route(router).expert_ids)
        rows.append(row)
    return pd.DataFrame(rows).set_index("router")


def _router_column(comparison: Comparison, router: str) -> None:
    request = comparison.request
    gold = request.query.gold
    route = comparison.route(router)
    st.markdown(f"#### {router}")
    st.caption(plain(route.reason))
    for aggregator in request.aggregators:
        answer = comparison.answer(router, aggregator)
        shown = letter_badge(answer.choice, gold) if answer.choice else plain(_short(answer.answer) or "no answer")
        votes = " · ".join(f"{letter} {weight:.2f}" for letter, weight in sorted(answer.votes.items()))
        st.markdown(f"**{aggregator}** → {shown} {verdict(answer.correct)}")
        if votes:
            st.caption(f"votes: {votes}")
    first = comparison.answer(router, request.aggregators[0])
    n_tokens = first.n_prompt_tokens + first.n_completion_tokens
    if n_tokens:
        st.caption(f"{first.timings.get('total_s', 0.0):.2f} s · {n_tokens:,} tokens · {usd(first.cost_usd)}")
    else:
        st.caption("recorded answers: no time, tokens or cost to count")
    by_expert = {a.expert: a for a in first.expert_answers}
    for choice in route.experts:
        _expert_answer(by_expert[choice.expert], choice.score, gold)


def _expert_answer(answer: ExpertAnswer, score: float, gold: str | None) -> None:
    if answer.error is not None:
        st.markdown(f"**{answer.expert}** · score {score:.2f} → :red[no answer ({answer.error.kind})]")
        st.caption(plain(answer.error.message))
        return
    guessed = " (a stray letter: the answer states none)" if answer.guessed else ""
    st.markdown(f"**{answer.expert}** · score {score:.2f} → {letter_badge(answer.choice, gold)}{guessed}")
    counts = f" · {answer.n_completion_tokens} tokens · {answer.latency_s:.2f} s" if answer.n_completion_tokens else ""
    with st.expander(f"{answer.expert}'s full answer{counts}"):
        st.markdown(plain(answer.text) or "(empty)")


def _short(text: str, width: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


if __name__ == "__main__":
    render()
