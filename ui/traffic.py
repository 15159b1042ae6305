"""Traffic: what the service served, from its request log in the database (`served_requests`):
requests over time, experts used, latency percentiles, fallbacks and errors."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from coe.store import RequestLog, ServedRequest, Store
from coe.store.database import now
from ui.display import usd
from ui.workbench import keep, workbench

WINDOWS = {
    "last hour": timedelta(hours=1),
    "last 24 hours": timedelta(days=1),
    "last 7 days": timedelta(days=7),
    "everything": None,
}
PERCENTILES = (50, 90, 99)


def render() -> None:
    bench = workbench()
    st.header("Traffic")
    keep(traffic_window="everything", traffic_live=False)
    window, live = st.columns([3, 1], vertical_alignment="bottom")
    window.selectbox("Requests from", list(WINDOWS), key="traffic_window")
    live.toggle("Refresh every 5 s", key="traffic_live", help="While the service runs.")
    every = 5.0 if st.session_state["traffic_live"] else None
    st.fragment(run_every=every)(_report)(bench.store, WINDOWS[st.session_state["traffic_window"]])


def _report(store: Store, span: timedelta | None) -> None:
    requests = RequestLog(store).since(now() - span if span else None)
    if not requests:
        st.info(
            f"No request in the service's log (`{store.url}`) for this window. The service records every request "
            "it serves there; this page reads only that log."
        )
        return
    frame = requests_frame(requests)
    _headline(frame)
    over_time, experts = st.columns(2)
    with over_time:
        st.altair_chart(requests_chart(frame), width="stretch", height=280)
    with experts:
        st.altair_chart(experts_chart(requests), width="stretch", height=280)
    st.subheader("Latency by model")
    st.dataframe(latency_table(frame), hide_index=True)
    fallbacks, errors = st.columns(2)
    with fallbacks:
        st.subheader("Fallbacks")
        pairs = Counter(pair for r in requests for pair in r.fallbacks)
        if pairs:
            st.dataframe(
                pd.DataFrame([{"failed expert": a, "replaced by": b, "times": n} for (a, b), n in pairs.most_common()]),
                hide_index=True,
            )
        else:
            st.caption("No expert had to be replaced.")
    with errors:
        st.subheader("Errors")
        failed = frame[frame["status"] >= 400]
        if failed.empty:
            st.caption("Every request succeeded.")
        else:
            counts = failed.groupby(["status", "error"], dropna=False).size().reset_index(name="requests")
            st.dataframe(counts, hide_index=True)
    st.subheader("Latest requests")
    st.dataframe(frame.sort_values("time", ascending=False).head(50), hide_index=True)


def requests_frame(requests: list[ServedRequest]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "time": r.created_at,
                "model": r.model,
                "router": r.router or "",
                "aggregator": r.aggregator or "",
                "experts": ", ".join(r.experts),
                "status": r.status,
                "error": r.error_kind or "",
                "fallbacks": len(r.fallbacks),
                "latency_s": r.latency_s,
                "tokens": r.n_prompt_tokens + r.n_completion_tokens,
                "cost_usd": r.cost_usd,
                "key": r.key_name or "",
            }
            for r in requests
        ]
    )


def _headline(frame: pd.DataFrame) -> None:
    n = len(frame)
    errors = int((frame["status"] >= 400).sum())
    p50, _, p99 = np.percentile(frame["latency_s"], PERCENTILES)
    cells = st.columns(6)
    cells[0].metric("Requests", f"{n:,}")
    cells[1].metric("Errors", f"{errors:,}", f"{errors / n:.1%}", delta_color="inverse", delta_arrow="off")
    cells[2].metric("With fallbacks", f"{int((frame['fallbacks'] > 0).sum()):,}")
    cells[3].metric("Latency p50", f"{p50:.2f} s")
    cells[4].metric("Latency p99", f"{p99:.2f} s")
    cells[5].metric(
        "Tokens",
        f"{int(frame['tokens'].sum()):,}",
        usd(float(frame["cost_usd"].sum())),
        delta_color="off",
        delta_arrow="off",
    )


def requests_chart(frame: pd.DataFrame) -> alt.Chart:
    """Requests per time bucket (minutes, hours or days, as the span asks), split ok / error."""
    span = frame["time"].max() - frame["time"].min()
    unit = (
        "yearmonthdatehoursminutes"
        if span <= pd.Timedelta(hours=3)
        else ("yearmonthdatehours" if span <= pd.Timedelta(days=3) else "yearmonthdate")
    )
    data = frame.assign(outcome=np.where(frame["status"] >= 400, "error", "ok"))
    return (
        alt.Chart(data)
        .mark_bar()
        .encode(
            x=alt.X(f"{unit}(time):T", title=None),
            y=alt.Y("count():Q", title="requests"),
            color=alt.Color("outcome:N", scale=alt.Scale(domain=["ok", "error"], range=["#4c78a8", "#e45756"])),
            tooltip=[
                alt.Tooltip(f"{unit}(time):T", title="from"),
                alt.Tooltip("count():Q", title="requests"),
                "outcome:N",
            ],
        )
        .properties(title="requests over time")
    )


def experts_chart(requests: list[ServedRequest]) -> alt.Chart:
    used = Counter(expert for r in requests for expert in r.experts)
    data = pd.DataFrame([{"expert": e, "requests": n} for e, n in used.items()], columns=["expert", "requests"])
    return (
        alt.Chart(data)
        .mark_bar()
        .encode(
            x=alt.X("requests:Q"),
            y=alt.Y("expert:N", sort="-x", title=None, axis=alt.Axis(labelLimit=220)),
            tooltip=["expert", "requests"],
        )
        .properties(title="experts used")
    )


def latency_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Latency percentiles per model (`coe`, `coe/<router>` or an expert id), in seconds."""
    rows = []
    for model, group in frame.groupby("model"):
        p50, p90, p99 = np.percentile(group["latency_s"], PERCENTILES)
        rows.append(
            {
                "model": model,
                "requests": len(group),
                "p50 s": round(p50, 3),
                "p90 s": round(p90, 3),
                "p99 s": round(p99, 3),
                "errors": int((group["status"] >= 400).sum()),
            }
        )
    return pd.DataFrame(rows)


if __name__ == "__main__":
    render()
