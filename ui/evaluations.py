"""Evaluations: stored `coe eval` runs side by side (accuracy with error bars over seeds against the best
single expert and the oracle, per category, against expert calls and cost) and a drill-down to the
items where routers disagree. GPQA items are shown by id and category only, never their text."""

from __future__ import annotations

from dataclasses import asdict

import altair as alt
import pandas as pd
import streamlit as st

from coe.datasets import is_redacted
from coe.errors import CoeError
from coe.evals.summary import EvalSummary
from coe.store import RunRecord, RunStore, trace_item
from ui.charts import heatmap, rows_height
from ui.display import letter_badge, plain
from ui.workbench import Workbench, keep, mmlu_pro, workbench

EVAL_HINT = (
    "coe eval --bench mmlu-pro --pool replay-mmlu-pro-ref8 --split random:1400:0 "
    "--routers knn,classifier,best-single,random,all,oracle --seeds 0,1 --limit 500"
)


def render() -> None:
    bench = workbench()
    st.header("Evaluations")
    runs = RunStore(bench.store).all()
    if not runs:
        st.info(f"No evaluation run is stored in `{bench.store.url}` yet. Run one, for example:")
        st.code(EVAL_HINT, language="bash")
        return
    labels = {run_label(run): run for run in reversed(runs)}
    finished = [label for label, run in labels.items() if run.summary]
    keep(eval_runs=finished[:1])
    chosen = st.multiselect("Runs", list(labels), key="eval_runs", help="Newest first; pick several to compare.")
    for label in chosen:
        if labels[label].summary is None:
            st.warning(
                f"Run {labels[label].id} has no results yet ({labels[label].status}): it is still running or was "
                f"stopped; finish it with `coe eval ... --resume {labels[label].id}`."
            )
    summaries = [EvalSummary.model_validate(labels[label].summary) for label in chosen if labels[label].summary]
    if not summaries:
        st.info("Pick a finished run above.")
        return
    frame = results_frame(summaries)
    st.dataframe(
        frame.drop(columns=["low", "high"]),
        hide_index=True,
        column_config={
            "accuracy": st.column_config.NumberColumn(format="%.4f"),
            "± std": st.column_config.NumberColumn(format="%.4f"),
            "Δ best single": st.column_config.NumberColumn(format="%+.4f"),
            "$ / query": st.column_config.NumberColumn(format="%.6f"),
        },
    )
    for summary in summaries:
        shown = frame[frame["run"] == summary.run_id]
        height = rows_height(shown["router"].nunique() * shown["aggregator"].nunique(), row_px=16, extra_px=80)
        st.altair_chart(accuracy_chart(shown, summary), width="stretch", height=height)
    costs = ["calls / query", *(["$ / query"] if (frame["$ / query"] > 0).any() else [])]
    for column, x in zip(st.columns(len(costs)), costs, strict=True):
        column.altair_chart(efficiency_chart(frame, x), width="stretch", height=320)
    st.divider()
    by_id = {summary.run_id: summary for summary in summaries}
    run_id = st.selectbox("Details of run", list(by_id), key="eval_detail")
    summary = by_id[run_id]
    _categories(summary)
    _disagreements(bench, summary)


def run_label(run: RunRecord) -> str:
    config = run.config
    pool = str(config.get("pool", "")).rsplit("/", 1)[-1].removesuffix(".yaml")
    return f"{run.id} · {config.get('bench')} · {pool} · {run.status}"


def results_frame(summaries: list[EvalSummary]) -> pd.DataFrame:
    """One row per run × router × aggregator, straight from the runs' stored summaries."""
    return pd.DataFrame(
        [
            {
                "run": summary.run_id,
                "router": r.router,
                "aggregator": r.aggregator,
                "accuracy": r.accuracy_mean,
                "± std": r.accuracy_std,
                "low": r.accuracy_mean - r.accuracy_std,
                "high": r.accuracy_mean + r.accuracy_std,
                "Δ best single": r.delta_vs_best_single,
                "seeds": len(r.accuracy_per_seed),
                "calls / query": r.calls_per_query,
                "$ / query": r.cost_per_query_usd,
                "loads": r.n_loads,
            }
            for summary in summaries
            for r in summary.results
        ]
    )


def accuracy_chart(frame: pd.DataFrame, summary: EvalSummary) -> alt.LayerChart:
    """Accuracy by router × aggregator, ± one standard deviation over seeds, with the best single
    expert's and the oracle's accuracy as reference lines."""
    y = alt.Y("router:N", sort=alt.EncodingSortField("accuracy", op="max", order="descending"), title=None)
    base = alt.Chart(frame).encode(y=y, yOffset="aggregator:N", color=alt.Color("aggregator:N"))
    bars = base.mark_errorbar(ticks=True).encode(
        x=alt.X("low:Q", title="accuracy", scale=alt.Scale(zero=False)), x2="high:Q"
    )
    points = base.mark_point(filled=True, size=70).encode(
        x="accuracy:Q",
        tooltip=["router", "aggregator", alt.Tooltip("accuracy:Q", format=".4f"), alt.Tooltip("± std:Q", format=".4f")],
    )
    lines = [{"line": f"best single ({summary.best_single.expert})", "accuracy": summary.best_single.accuracy_mean}]
    if summary.oracle is not None:
        lines.append({"line": "oracle", "accuracy": summary.oracle.accuracy_mean})
    reference = alt.Chart(pd.DataFrame(lines)).encode(x="accuracy:Q")
    rules = reference.mark_rule(strokeDash=[5, 4], color="gray")
    labels = reference.mark_text(align="left", dx=4, dy=-6, color="gray").encode(text="line:N", y=alt.value(0))
    title = (
        f"{summary.run_id}: {summary.bench}, {summary.n_test} test items, seeds {', '.join(map(str, summary.seeds))}"
    )
    return (rules + labels + bars + points).properties(title=title)


def efficiency_chart(frame: pd.DataFrame, x: str) -> alt.Chart:
    """Accuracy against what it costs: expert calls per query, or dollars per query."""
    return (
        alt.Chart(frame)
        .mark_point(filled=True, size=80)
        .encode(
            x=alt.X(f"{x}:Q"),
            y=alt.Y("accuracy:Q", scale=alt.Scale(zero=False)),
            color="router:N",
            shape="aggregator:N",
            tooltip=["run", "router", "aggregator", alt.Tooltip("accuracy:Q", format=".4f"), alt.Tooltip(f"{x}:Q")],
        )
        .properties(title=f"accuracy against {x}")
    )


def _categories(summary: EvalSummary) -> None:
    rows = [
        {"router / aggregator": key, "category": category or "(none)", "accuracy": value}
        for key, by_category in summary.per_category.items()
        for category, value in by_category.items()
    ]
    if rows:
        st.subheader("Accuracy per category")
        st.altair_chart(
            heatmap(pd.DataFrame(rows), x="category", y="router / aggregator", value="accuracy"), width="stretch"
        )


# --------------------------------------------------------------------------- drill-down


@st.cache_resource(show_spinner="reading the run's results", max_entries=4)
def results_table(database_url: str, run_id: str, updated_at: str) -> pd.DataFrame:
    """Every stored fused answer of a run (cached per version of the run)."""
    from coe.store import Store

    return pd.DataFrame([asdict(row) for row in RunStore(Store(database_url)).results(run_id)])


def _disagreements(bench: Workbench, summary: EvalSummary) -> None:
    st.subheader("Items: where routers disagree")
    record = RunStore(bench.store).get(summary.run_id)
    table = results_table(bench.store.url, summary.run_id, str(record.updated_at))
    routers = sorted(table["router"].unique())
    seed_col, aggregator_col, category_col = st.columns(3)
    seed = seed_col.selectbox("Seed", summary.seeds, key="eval_seed")
    aggregator = aggregator_col.selectbox("Aggregator", sorted(table["aggregator"].unique()), key="eval_aggregator")
    categories = ["any category", *sorted(c for c in table["category"].dropna().unique())]
    category = category_col.selectbox("Category", categories, key="eval_category")
    keep(eval_routers=[r for r in routers if r != "oracle"], eval_disagree=True)
    chosen = st.multiselect("Routers", routers, key="eval_routers")
    only = st.checkbox("Only items where these routers disagree", key="eval_disagree")
    if not chosen:
        st.info("Pick at least one router.")
        return
    rows = table[(table["seed"] == seed) & (table["aggregator"] == aggregator) & table["router"].isin(chosen)]
    if category != "any category":
        rows = rows[rows["category"] == category]
    rows = rows.assign(choice=rows["choice"].fillna("–"), category=rows["category"].fillna(""))
    choices = rows.pivot_table(index=["item_id", "category"], columns="router", values="choice", aggfunc="first")
    correct = rows.pivot_table(index=["item_id", "category"], columns="router", values="correct", aggfunc="first")
    disagree = choices.nunique(axis=1) > 1
    st.caption(f"{int(disagree.sum())} of {len(choices)} items get different answers from {', '.join(chosen)}.")
    picked = disagree if only else pd.Series(True, index=disagree.index)
    if not picked.any():
        return
    shown = choices[picked].fillna("–") + correct[picked].map(lambda ok: " ✓" if ok else " ✗")
    st.dataframe(shown.reset_index(), hide_index=True, height=260)
    item_ids = [item for item, _ in shown.index]
    item = st.selectbox("Item", item_ids, key="eval_item")
    _trace(bench, summary, item, seed)


def _trace(bench: Workbench, summary: EvalSummary, item_id: str, seed: int) -> None:
    """One item: the question (never for GPQA), each router's route and each expert's answer."""
    trace = trace_item(bench.store, summary.run_id, item_id)
    gold = None
    with st.container(border=True):
        if is_redacted(summary.bench):
            st.caption(f"{summary.bench} item {item_id}: its text is never shown (the benchmark's authors ask so).")
        else:
            try:
                query = {q.id: q for q in mmlu_pro("test", bench.settings.data_dir)}.get(item_id)
            except CoeError:
                query = None
            if query is not None:
                gold = query.gold
                st.caption(f"MMLU-Pro test · id {query.id} · {query.category} · gold answer {query.gold}")
                st.markdown(plain(query.text))
                st.markdown("\n".join(f"- **{chr(65 + i)}.** {plain(c)}" for i, c in enumerate(query.choices or ())))
    routes = pd.DataFrame(
        [
            {"router": router, "experts (score)": ", ".join(f"{e} ({s:.2f})" for e, s in experts), "reason": reason}
            for route_seed, router, experts, reason in trace.routes
            if route_seed == seed
        ]
    )
    st.dataframe(routes, hide_index=True)
    for expert, choice, text, error in trace.generations:
        if error:
            st.markdown(f"**{expert}** → :red[no answer]: {plain(error)}")
            continue
        st.markdown(f"**{expert}** → {letter_badge(choice, gold)}")
        if text and not is_redacted(summary.bench):
            with st.expander(f"{expert}'s full answer"):
                st.markdown(plain(text))


if __name__ == "__main__":
    render()
