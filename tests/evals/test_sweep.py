"""`coe eval --sweep` on the reference replay pool: one run per k policy, spending what each policy
says, and a report with the accuracy-against-calls and accuracy-against-cost curves; the stacked
aggregator and k policies through `coe eval`."""

import json
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from coe.backends.replay import ReplayBackend
from coe.errors import RunError
from coe.evals.run import run_eval
from coe.evals.sweep import sweep_figure, sweep_points, write_sweep_report
from coe.settings import Settings
from coe.store import Store
from tests.conftest import CoeRunner
from tests.evals.ref8 import REF8, ref8_config


@pytest.mark.slow
def test_sweep_runs_each_k_policy_and_reports_the_curves(
    env: dict[str, str], tmp_path: Path, coe_here: CoeRunner
) -> None:
    out = tmp_path / "sweep.json"
    args = ["eval", "--bench", "mmlu-pro", "--pool", str(REF8), "--split", "random:1400:0", "--seeds", "0"]
    args += ["--routers", "best-single,all", "--aggregators", "majority,stacked", "--limit", "300", "--sweep"]
    result = coe_here(*args, "--json", str(out), env=env)
    assert result.returncode == 0, result.stderr
    sweep = json.loads(out.read_text())
    assert len(sweep["runs"]) == 6
    points = {(p["router"], p["aggregator"], p["policy"]): p for p in sweep["points"]}
    calls = {policy: p["calls_per_query"] for (r, a, policy), p in points.items() if (r, a) == ("all", "majority")}
    assert calls["fixed k=1"] == 8 == calls["fixed k=3"]  # `all` asks every expert under a fixed k
    assert 2 < calls["auto k≤3"] < 8 and 1 <= calls["calls:1.5 k≤3"] <= calls["calls:2 k≤3"] < calls["auto k≤3"]
    assert 1 <= calls["gain:2 k≤3"] < calls["auto k≤3"]
    assert all(p["cost_per_query_usd"] > 0 for p in sweep["points"])  # replayed tokens carry the registry's prices
    assert all(p["calls_per_query"] == 1 for (r, _, _), p in points.items() if r == "best-single")
    report = next((tmp_path / "reports").glob("sweep-*.md"))
    text = report.read_text()
    assert "| all | stacked | auto k≤3 |" in text
    assert "| all-experts vote | majority | fixed k=1 | 8.00 |" in text and "| best single expert | majority |" in text
    assert {p.name.rsplit("-", 1)[1] for p in report.parent.glob("sweep-*.png")} == {"calls.png", "cost.png"}


def test_a_sweep_refuses_a_given_k(env: dict[str, str], coe_here: CoeRunner) -> None:
    args = ["eval", "--bench", "mmlu-pro", "--pool", str(REF8), "--split", "random:1400:0", "--k", "3", "--sweep"]
    result = coe_here(*args, env=env)
    assert result.returncode != 0 and "--sweep runs its own k policies" in result.stderr


def test_the_sweep_report_draws_best_single_the_all_experts_vote_and_the_oracle_as_points(
    settings: Settings, tmp_path: Path
) -> None:
    store, replay = Store(settings.database_url), {"replay": ReplayBackend()}
    summaries = [
        run_eval(
            ref8_config(
                routers=("knn", "random", "all", "oracle"), aggregators=("majority", "weighted"), limit=100, k=k
            ),
            settings=settings,
            store=store,
            backends=replay,
        )
        for k in (1, 3)
    ]
    by = {(r.router, r.aggregator, r.k): r for s in summaries for r in s.results}
    expected = {  # label: (router, k of the run drawn), with the majority vote
        "best single expert": ("best-single", 1),
        "all-experts vote": ("all", 1),
        "oracle (upper bound)": ("oracle", 1),
        "random": ("random", 3),
    }
    assert by["best-single", "majority", 1].calls_per_query == 1 and by["all", "majority", 1].calls_per_query == 8
    for axis in ("calls", "cost"):
        figure = sweep_figure(sweep_points(summaries), axis)
        ax = figure.axes[0]
        drawn = {line.get_label(): line.get_xydata().tolist() for line in ax.lines}
        for label, (router, k) in expected.items():
            result = by[router, "majority", k]
            spend = result.calls_per_query if axis == "calls" else result.cost_per_query_usd
            assert drawn[label] == [[spend, result.accuracy_mean]]
        assert [x for x, _ in drawn["knn / weighted"]] == (
            [1, 3] if axis == "calls" else sorted(by["knn", "weighted", k].cost_per_query_usd for k in (1, 3))
        )
        assert {text.get_text() for text in ax.texts} == set(expected)
        assert set(expected) <= {text.get_text() for text in ax.get_legend().get_texts()}
        plt.close(figure)
    text = write_sweep_report(summaries, tmp_path / "reports").read_text()
    oracle = by["oracle", "majority", 1]
    assert f"| oracle (upper bound) | majority | fixed k=1 | 1.00 | {oracle.cost_per_query_usd:.6f} |" in text
    assert "| all-experts vote | majority | fixed k=1 | 8.00 |" in text and "| best single expert |" in text
    capped = summaries[1].model_copy(update={"max_cost_usd": 0.01})
    with pytest.raises(RunError, match="one benchmark, pool, split, seeds and cost cap"):
        sweep_points([summaries[0], capped])
