"""`coe report`: a run's summary as Markdown plus three plots (accuracy with error bars, per-category
heat map, accuracy against expert calls), written where people can look at them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from coe.evals.summary import EvalSummary


def write_report(summary: EvalSummary, folder: Path) -> Path:
    """Write `<run id>.md` and its PNGs into `folder`; returns the Markdown path."""
    import matplotlib

    matplotlib.use("Agg")
    folder.mkdir(parents=True, exist_ok=True)
    stem = summary.run_id
    plots = {
        "accuracy": _plot_accuracy(summary, folder / f"{stem}-accuracy.png"),
        "categories": _plot_categories(summary, folder / f"{stem}-categories.png"),
        "calls": _plot_calls(summary, folder / f"{stem}-calls.png"),
    }
    path = folder / f"{stem}.md"
    path.write_text(_markdown(summary, {name: p.name for name, p in plots.items()}))
    return path


def _label(router: str, aggregator: str) -> str:
    return f"{router} / {aggregator}"


def _plot_accuracy(summary: EvalSummary, path: Path) -> Path:
    import matplotlib.pyplot as plt

    results = sorted(summary.results, key=lambda r: r.accuracy_mean)
    fig, ax = plt.subplots(figsize=(8, 0.38 * len(results) + 1.6))
    y = np.arange(len(results))
    colors = ["#7f7f7f" if r.router in ("best-single", "random", "all", "oracle") else "#1f77b4" for r in results]
    ax.barh(y, [r.accuracy_mean for r in results], xerr=[r.accuracy_std for r in results], color=colors, capsize=3)
    ax.set_yticks(y, [_label(r.router, r.aggregator) for r in results])
    ax.axvline(summary.best_single.accuracy_mean, color="#d62728", linestyle="--", label="best single expert")
    if summary.oracle:
        ax.axvline(summary.oracle.accuracy_mean, color="#2ca02c", linestyle=":", label="oracle (upper bound)")
    low = min(r.accuracy_mean - r.accuracy_std for r in results)
    ax.set_xlim(max(0.0, low - 0.05), min(1.0, max(r.accuracy_mean for r in results) + 0.05))
    ax.set_xlabel(f"accuracy (mean ± std over seeds {summary.seeds})")
    ax.set_title(f"{summary.bench}: routers × aggregators (grey: baselines)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _plot_categories(summary: EvalSummary, path: Path) -> Path:
    import matplotlib.pyplot as plt

    rows = sorted(summary.per_category)
    categories = sorted({c for values in summary.per_category.values() for c in values})
    grid = np.array([[summary.per_category[row].get(c, np.nan) for c in categories] for row in rows])
    fig, ax = plt.subplots(figsize=(0.75 * len(categories) + 3, 0.4 * len(rows) + 1.8))
    image = ax.imshow(grid, cmap="viridis", aspect="auto", vmin=np.nanmin(grid), vmax=np.nanmax(grid))
    ax.set_xticks(range(len(categories)), categories, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), [row.replace("/", " / ") for row in rows])
    for i in range(len(rows)):
        for j in range(len(categories)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7, color="white")
    fig.colorbar(image, ax=ax, label="accuracy")
    ax.set_title("accuracy per category (mean over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _plot_calls(summary: EvalSummary, path: Path) -> Path:
    """Colour per router, marker per aggregator (points of equal routers overlap instead of labels)."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    routers = list(dict.fromkeys(r.router for r in summary.results))
    aggregators = list(dict.fromkeys(r.aggregator for r in summary.results))
    colors = {router: plt.get_cmap("tab10")(i % 10) for i, router in enumerate(routers)}
    markers = {aggregator: "osD^v"[i % 5] for i, aggregator in enumerate(aggregators)}
    fig, ax = plt.subplots(figsize=(7, 5))
    for r in summary.results:
        ax.errorbar(
            r.calls_per_query,
            r.accuracy_mean,
            yerr=r.accuracy_std,
            fmt=markers[r.aggregator],
            color=colors[r.router],
            capsize=3,
            markersize=8,
            alpha=0.8,
        )
    ax.axhline(summary.best_single.accuracy_mean, color="#d62728", linestyle="--")
    handles = [Line2D([], [], color=colors[r], marker="o", linestyle="", label=r) for r in routers]
    handles += [Line2D([], [], color="black", marker=markers[a], linestyle="", label=a) for a in aggregators]
    handles.append(Line2D([], [], color="#d62728", linestyle="--", label="best single expert"))
    ax.legend(handles=handles, loc="best", fontsize=8)
    ax.set_xlabel("expert calls per query")
    ax.set_ylabel("accuracy")
    ax.set_title("accuracy against cost (expert calls per query)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _markdown(summary: EvalSummary, plots: dict[str, str]) -> str:
    lines = [
        f"# coe evaluation {summary.run_id}",
        "",
        f"Benchmark **{summary.bench}**, pool `{summary.pool}`, split `{summary.split}` (its seed moves with each run "
        f"seed), seeds {summary.seeds}, {summary.n_test} test items per seed. Accuracy is the mean over seeds ± the "
        "sample standard deviation; Δ is in accuracy points against the best single expert chosen on the profiling "
        "items, with a paired bootstrap 95% interval over the test items (same items, same seeds); a row *wins* only "
        "when its whole interval lies above zero."
        + (f" The kshot router saw {summary.kshot} profiling items per category." if summary.kshot else "")
        + (
            f" Each query was capped at {summary.max_cost_usd:g} USD of estimated cost (its prompt at four "
            "characters a token plus the generation budget, at each expert's price): pricier experts were not "
            "asked, and a route over the cap kept its best-ranked experts that fit."
            if summary.max_cost_usd
            else ""
        ),
        "",
        "| router | aggregator | accuracy | Δ pts [95% CI] | wins | expert calls / query | model loads | time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(summary.results, key=lambda r: -r.accuracy_mean):
        lines.append(
            f"| {r.router} | {r.aggregator} | {r.accuracy_mean:.4f} ± {r.accuracy_std:.4f} | {r.delta_text()} | "
            f"{'yes' if r.wins else ''} | {r.calls_per_query:.2f} | {r.n_loads:g} | {r.wall_s:.1f} |"
        )
    best = summary.best_single
    lines += [
        "",
        f"Best single expert (chosen on the profiling items): **{best.expert}** "
        f"(per seed: {', '.join(best.experts_per_seed)}), accuracy {best.accuracy_mean:.4f} ± {best.accuracy_std:.4f}.",
    ]
    if summary.oracle:
        lines.append(
            f"Oracle (an expert that was right, when any was: an upper bound, not a router): "
            f"{summary.oracle.accuracy_mean:.4f} ± {summary.oracle.accuracy_std:.4f}."
        )
    lines += ["", f"![accuracy]({plots['accuracy']})", "", f"![accuracy against calls]({plots['calls']})", ""]
    categories = sorted({c for values in summary.per_category.values() for c in values})
    lines += [
        "## Per category",
        "",
        "| router / aggregator | " + " | ".join(categories) + " |",
        "|---|" + "---|" * len(categories),
    ]
    for row in sorted(summary.per_category):
        values = summary.per_category[row]
        lines.append(f"| {row} | " + " | ".join(f"{values.get(c, float('nan')):.3f}" for c in categories) + " |")
    lines += ["", f"![per category]({plots['categories']})", ""]
    return "\n".join(lines)
