"""Accuracy against spending: the same routers × aggregators evaluated under several k policies (one
stored run each), traced as curves of accuracy against expert calls per query and against cost per
query, with the best single expert, the all-experts vote and the oracle as reference points.

`coe eval --sweep` runs the policies of `SWEEP` (each run resumable on its own) and writes the
report; `coe report RUN_ID RUN_ID ...` draws it from finished runs of one benchmark, pool and split.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict

from coe.errors import RunError
from coe.evals.summary import EvalSummary

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SWEEP = ("1", "calls:1.5", "calls:2", "gain:2", "auto", "3")
"""The k policies of `coe eval --sweep`: N is a fixed k of N (`coe.policy.KPolicy` for the others)."""
REFERENCES = {
    "best-single": ("best single expert", "*", "#d62728"),
    "all": ("all-experts vote", "s", "black"),
    "oracle": ("oracle (upper bound)", "P", "#2ca02c"),
    "random": ("random", "X", "#7f7f7f"),
}
"""Routers drawn as reference points, not curves: their label, marker and colour."""


class SweepPoint(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    router: str
    aggregator: str
    policy: str
    """The run's k policy and k, e.g. `fixed k=3`, `calls:2 k≤3`."""
    run_id: str
    calls_per_query: float
    cost_per_query_usd: float
    accuracy_mean: float
    accuracy_std: float


def sweep_points(summaries: Sequence[EvalSummary]) -> list[SweepPoint]:
    """Every (router, aggregator) of every run as one point; the runs must share benchmark, pool, split,
    seeds and cost cap."""
    settings = {(s.bench, s.pool, s.split, tuple(s.seeds), s.max_cost_usd) for s in summaries}
    if len(settings) > 1:
        raise RunError(
            "a sweep compares runs of one benchmark, pool, split, seeds and cost cap; these differ: " + str(settings)
        )
    return [
        SweepPoint(
            router=r.router,
            aggregator=r.aggregator,
            policy=f"fixed k={r.k}" if s.k_policy == "fixed" else f"{s.k_policy} k≤{r.k}",
            run_id=s.run_id,
            calls_per_query=r.calls_per_query,
            cost_per_query_usd=r.cost_per_query_usd,
            accuracy_mean=r.accuracy_mean,
            accuracy_std=r.accuracy_std,
        )
        for s in summaries
        for r in s.results
    ]


def reference_points(points: Sequence[SweepPoint]) -> dict[str, SweepPoint]:
    """Each reference router present, by its label, as one point: under a fixed k (its most calls: the
    all-experts vote asks every expert, random its k), with the majority vote where there is one."""
    aggregators = [p.aggregator for p in points]
    voting = "majority" if "majority" in aggregators else next(iter(aggregators), "")
    chosen = {}
    for router, (label, _, _) in REFERENCES.items():
        mine = [p for p in points if p.router == router and p.aggregator == voting]
        fixed = [p for p in mine if p.policy.startswith("fixed")] or mine
        if fixed:
            chosen[label] = max(fixed, key=lambda p: (p.calls_per_query, p.accuracy_mean))
    return chosen


def write_sweep_report(summaries: Sequence[EvalSummary], folder: Path) -> Path:
    """`sweep-<first run id>.md` with its table and two plots (accuracy against calls and against cost)."""
    import matplotlib.pyplot as plt

    points = sweep_points(summaries)
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"sweep-{summaries[0].run_id}"
    plots = {}
    for axis in ("calls", "cost"):
        figure = sweep_figure(points, axis)
        plots[axis] = f"{stem}-{axis}.png"
        figure.savefig(folder / plots[axis], dpi=120)
        plt.close(figure)
    path = folder / f"{stem}.md"
    first = summaries[0]
    cap = f" Each query was capped at {first.max_cost_usd:g} USD of estimated cost." if first.max_cost_usd else ""
    lines = [
        f"# coe sweep over k policies: {first.bench}, pool `{Path(first.pool).name}`, split `{first.split}`",
        "",
        f"Runs {', '.join(s.run_id for s in summaries)}; seeds {first.seeds}, {first.n_test} test items per seed. "
        "Accuracy is the mean over seeds ± the sample standard deviation; cost is USD per query at the registry's "
        f"prices (replayed answers: four characters a token of the prompt and the response).{cap}",
        "",
        "| router | aggregator | k policy | calls / query | cost / query (USD) | accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for p in sorted(points, key=lambda p: (p.router, p.aggregator, p.calls_per_query)):
        lines.append(
            f"| {p.router} | {p.aggregator} | {p.policy} | {p.calls_per_query:.2f} | {p.cost_per_query_usd:.6f} | "
            f"{p.accuracy_mean:.4f} ± {p.accuracy_std:.4f} |"
        )
    lines += [
        "",
        "Reference points on both plots:",
        "",
        "| reference | aggregator | k policy | calls / query | cost / query (USD) | accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for label, p in reference_points(points).items():
        lines.append(
            f"| {label} | {p.aggregator} | {p.policy} | {p.calls_per_query:.2f} | {p.cost_per_query_usd:.6f} | "
            f"{p.accuracy_mean:.4f} |"
        )
    lines += ["", f"![accuracy against calls]({plots['calls']})", "", f"![accuracy against cost]({plots['cost']})", ""]
    path.write_text("\n".join(lines))
    return path


def sweep_figure(points: Sequence[SweepPoint], axis: Literal["calls", "cost"]) -> Figure:
    """Accuracy against calls or cost per query: one line per (router, aggregator) through its policies, by
    increasing spend; each reference router as one labelled point, with a level line for best single and oracle."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def spend(p: SweepPoint) -> float:
        return p.calls_per_query if axis == "calls" else p.cost_per_query_usd

    curves: dict[tuple[str, str], list[SweepPoint]] = {}
    for p in points:
        if p.router not in REFERENCES:
            curves.setdefault((p.router, p.aggregator), []).append(p)
    routers = list(dict.fromkeys(router for router, _ in curves))
    aggregators = list(dict.fromkeys(aggregator for _, aggregator in curves))
    colors = {router: plt.get_cmap("tab10")(i % 10) for i, router in enumerate(routers)}
    styles = {aggregator: ("-", "--", ":", "-.")[i % 4] for i, aggregator in enumerate(aggregators)}
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for (router, aggregator), curve in curves.items():
        curve = sorted(curve, key=spend)
        ax.plot(
            [spend(p) for p in curve],
            [p.accuracy_mean for p in curve],
            linestyle=styles[aggregator],
            marker="o",
            color=colors[router],
            label=f"{router} / {aggregator}",
        )
    for label, p in reference_points(points).items():
        _, marker, color = REFERENCES[p.router]
        ax.plot(spend(p), p.accuracy_mean, marker=marker, markersize=12, color=color, linestyle="", label=label)
        ax.annotate(label, (spend(p), p.accuracy_mean), textcoords="offset points", xytext=(6, 4), fontsize=8)
        if p.router in ("best-single", "oracle"):
            ax.axhline(p.accuracy_mean, color=color, linestyle=":", linewidth=1)
    ax.set_xlabel("expert calls per query" if axis == "calls" else "cost per query (USD)")
    ax.set_ylabel("accuracy (mean over seeds)")
    ax.set_title(f"accuracy against {'expert calls' if axis == 'calls' else 'cost'} per query, by k policy")
    ax.legend(fontsize=7, loc="center right", ncol=2)
    fig.tight_layout()
    return fig
