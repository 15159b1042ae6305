"""`coe eval --sweep` on the reference replay pool: one run per k policy, spending what each policy
says, and a report with the accuracy-against-calls and accuracy-against-cost curves; the stacked
aggregator and k policies through `coe eval`."""

import json
from pathlib import Path

import pytest

from tests.conftest import REPO, CoeRunner

REF8 = REPO / "registry" / "replay-mmlu-pro-ref8.yaml"


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
    assert len(sweep["runs"]) == 5
    points = {(p["router"], p["aggregator"], p["policy"]): p for p in sweep["points"]}
    calls = {policy: p["calls_per_query"] for (r, a, policy), p in points.items() if (r, a) == ("all", "majority")}
    assert calls["fixed k=1"] == 8 == calls["fixed k=3"]  # `all` asks every expert under a fixed k
    assert 2 < calls["auto k≤3"] < 8 and 1 <= calls["calls:1.5 k≤3"] <= calls["calls:2 k≤3"] < calls["auto k≤3"]
    assert all(p["cost_per_query_usd"] > 0 for p in sweep["points"])  # replayed tokens carry the registry's prices
    assert all(p["calls_per_query"] == 1 for (r, _, _), p in points.items() if r == "best-single")
    report = next((tmp_path / "reports").glob("sweep-*.md"))
    text = report.read_text()
    assert "| all | stacked | auto k≤3 |" in text
    assert {p.name.rsplit("-", 1)[1] for p in report.parent.glob("sweep-*.png")} == {"calls.png", "cost.png"}


def test_a_sweep_refuses_a_given_k(env: dict[str, str], coe_here: CoeRunner) -> None:
    args = ["eval", "--bench", "mmlu-pro", "--pool", str(REF8), "--split", "random:1400:0", "--k", "3", "--sweep"]
    result = coe_here(*args, env=env)
    assert result.returncode != 0 and "--sweep runs its own k policies" in result.stderr
