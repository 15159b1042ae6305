"""Accuracy against spending: the same routers × aggregators evaluated under several k policies (one
stored run each), traced as curves of accuracy against expert calls per query and against cost per
query, with the best single expert, the all-experts vote and the oracle as reference points.

`coe eval --sweep` runs the policies of `SWEEP` (each run resumable on its own) and writes the
report; `coe report RUN_ID RUN_ID ...` draws it from finished runs of one benchmark, pool and split.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from coe.errors import RunError
from coe.evals.summary import EvalSummary

SWEEP = ("1", "calls:1.5", "calls:2", "auto", "3")
"""The k policies of `coe eval --sweep`: N is a fixed k of N (`coe.policy.KPolicy` for the others)."""
REFERENCES = ("best-single", "all", "oracle", "random")
"""Routers drawn as reference points, not curves."""


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
    """Every (router, aggregator) of every run as one point; the runs must share benchmark, pool and split."""
    settings = {(s.bench, s.pool, s.split, tuple(s.seeds)) for s in summaries}
    if len(settings) > 1:
        raise RunError("a sweep compares runs of one benchmark, pool, split and seeds; these differ: " + str(settings))
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


def write_sweep_report(summaries: Sequence[EvalSummary], folder: Path) -> Path:
    """`sweep-<first run id>.md` with its table and two plots (accuracy against calls and against cost)."""
    import matplotlib

    matplotlib.use("Agg")
    points = sweep_points(summaries)
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"sweep-{summaries[0].run_id}"
    plots = {axis: _plot(points, summaries, axis, folder / f"{stem}-{axis}.png").name for axis in ("calls", "cost")}
    path = folder / f"{stem}.md"
    first = summaries[0]
    lines = [
        f"# coe sweep over k policies: {first.bench}, pool `{Path(first.pool).name}`, split `{first.split}`",
        "",
        f"Runs {', '.join(s.run_id for s in summaries)}; seeds {first.seeds}, {first.n_test} test items per seed. "
        "Accuracy is the mean over seeds ± the sample standard deviation; cost is USD per query at the registry's "
        "prices (replayed answers: four characters a token of the prompt and the response).",
        "",
        "| router | aggregator | k policy | calls / query | cost / query (USD) | accuracy |",
        "|---|---|---|---|---|---|",
    ]
    for p in sorted(points, key=lambda p: (p.router, p.aggregator, p.calls_per_query)):
        lines.append(
            f"| {p.router} | {p.aggregator} | {p.policy} | {p.calls_per_query:.2f} | {p.cost_per_query_usd:.6f} | "
            f"{p.accuracy_mean:.4f} ± {p.accuracy_std:.4f} |"
        )
    lines += ["", f"![accuracy against calls]({plots['calls']})", "", f"![accuracy against cost]({plots['cost']})", ""]
    path.write_text("\n".join(lines))
    return path


def _plot(points: list[SweepPoint], summaries: Sequence[EvalSummary], axis: str, path: Path) -> Path:
    """One line per (router, aggregator) through its policies, by increasing spend; reference points."""
    import matplotlib.pyplot as plt

    def spend(p: SweepPoint) -> float:
        return p.calls_per_query if axis == "calls" else p.cost_per_query_usd

    curves: dict[tuple[str, str], list[SweepPoint]] = {}
    for p in points:
        curves.setdefault((p.router, p.aggregator), []).append(p)
    routers = list(dict.fromkeys(p.router for p in points if p.router not in REFERENCES))
    aggregators = list(dict.fromkeys(p.aggregator for p in points))
    colors = {router: plt.get_cmap("tab10")(i % 10) for i, router in enumerate(routers)}
    styles = {aggregator: ("-", "--", ":", "-.")[i % 4] for i, aggregator in enumerate(aggregators)}
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for (router, aggregator), curve in curves.items():
        if router in REFERENCES:
            continue
        curve = sorted(curve, key=spend)
        ax.plot(
            [spend(p) for p in curve],
            [p.accuracy_mean for p in curve],
            linestyle=styles[aggregator],
            marker="o",
            color=colors[router],
            label=f"{router} / {aggregator}",
        )
    for (router, aggregator), curve in curves.items():
        if router in REFERENCES and router != "oracle" and aggregator == aggregators[0]:
            fixed = [p for p in curve if p.policy.startswith("fixed")] or curve  # the all-experts vote itself
            best = max(fixed, key=lambda p: (p.calls_per_query, p.accuracy_mean))
            ax.plot(spend(best), best.accuracy_mean, marker="*", markersize=14, color="black", linestyle="")
            ax.annotate(router, (spend(best), best.accuracy_mean), textcoords="offset points", xytext=(6, 4))
    oracle = summaries[0].oracle
    if oracle:
        ax.axhline(oracle.accuracy_mean, color="#2ca02c", linestyle=":", label="oracle (upper bound)")
    ax.axhline(summaries[0].best_single.accuracy_mean, color="#d62728", linestyle="--", label="best single expert")
    ax.set_xlabel("expert calls per query" if axis == "calls" else "cost per query (USD)")
    ax.set_ylabel("accuracy (mean over seeds)")
    ax.set_title(f"accuracy against {'expert calls' if axis == 'calls' else 'cost'} per query, by k policy")
    ax.legend(fontsize=7, loc="center right", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
