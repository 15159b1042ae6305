"""`coe eval --max-cost-usd` on the reference replay pool: a cap that admits every expert changes no
number, one below the priciest expert (qwen1.5-110b) routes around it and trims the all-experts
vote, one below every expert is refused before a run is stored; the cap is recorded, reported and
must be the same on resume."""

from pathlib import Path

import pytest

from coe.answers import question_prompt
from coe.backends.replay import ReplayBackend
from coe.costs import call_cost_bound
from coe.datasets import load_mmlu_pro
from coe.errors import ConfigError, RunError
from coe.evals.report import write_report
from coe.evals.run import run_eval
from coe.evals.summary import EvalSummary
from coe.registry import Registry
from coe.settings import Settings
from coe.store import RunStore, Store
from tests.conftest import DATA_DIR
from tests.evals.ref8 import REF8, ref8_config

BASE = ref8_config(routers=("best-single", "all", "oracle"), aggregators=("majority",), limit=100, max_tokens=4096)
TIGHT = 0.007
"""Below qwen1.5-110b's least possible cost per call (4096 tokens at 1.8 USD per million: 0.0074), above
any other expert's most on these items (llama-3-70b at 0.9 USD: 0.0042 for the longest prompt, 2,209
characters), below all eight together."""


def evaluate(settings: Settings, cap: float | None, run_id: str | None = None) -> EvalSummary:
    config = BASE.model_copy(update={"max_cost_usd": cap})
    return run_eval(
        config,
        settings=settings,
        store=Store(settings.database_url),
        backends={"replay": ReplayBackend()},
        run_id=run_id,
    )


def numbers(summary: EvalSummary) -> dict[str, tuple[float, float, float]]:
    return {r.router: (r.accuracy_mean, r.calls_per_query, r.cost_per_query_usd) for r in summary.results}


def test_a_cap_changes_routes_only_where_it_binds(settings: Settings, tmp_path: Path) -> None:
    runs = RunStore(Store(settings.database_url))
    free, roomy, tight = evaluate(settings, None), evaluate(settings, 1.0), evaluate(settings, TIGHT)
    assert numbers(roomy) == numbers(free)
    assert sorted(runs.routes(roomy.run_id)) == sorted(runs.routes(free.run_id))

    pool = Registry.from_file(REF8, DATA_DIR)
    by_id = {query.id: query for query in load_mmlu_pro("test", DATA_DIR)}
    routes = runs.routes(tight.run_id)
    assert routes and all("qwen1.5-110b" not in [expert for expert, _ in experts] for *_, experts in routes)
    for _, _, item, experts in routes:
        chars = len(question_prompt(by_id[item]).text)
        assert sum(call_cost_bound(pool[expert], chars, 4096) for expert, _ in experts) <= TIGHT
    assert any("qwen1.5-110b" in [e for e, _ in experts] for *_, experts in runs.routes(free.run_id))
    calls = {r.router: r.calls_per_query for r in tight.results}
    assert calls["best-single"] == 1 == calls["oracle"] and 1 < calls["all"] < 7  # all: fewer, best-ranked first
    assert numbers(tight)["all"][2] < numbers(free)["all"][2]

    assert tight.max_cost_usd == TIGHT and free.max_cost_usd is None
    assert f"capped at {TIGHT:g} USD" in write_report(tight, tmp_path / "report").read_text()
    for other in (None, 0.008):
        with pytest.raises(RunError, match=f"max_cost_usd: stored {TIGHT}, given {other}"):
            evaluate(settings, other, run_id=tight.run_id)


def test_a_cap_below_every_expert_is_refused_before_a_run_is_stored(settings: Settings) -> None:
    with pytest.raises(ConfigError, match=r"admits no expert for query '\d+': the cheapest, gemma-7b, may cost"):
        evaluate(settings, 0.0001)
    assert RunStore(Store(settings.database_url)).all() == []
