"""Every page through Streamlit's AppTest: it renders, its main interaction works on real data (the replay
pool, a stored run, a request log), and bad input shows a plain message, never a traceback."""

from __future__ import annotations

from datetime import timedelta
from functools import partial
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from coe.compose import compose
from coe.datasets import load_gpqa, load_mmlu_pro
from coe.evals.config import EvalConfig
from coe.evals.run import run_eval
from coe.evals.summary import EvalSummary
from coe.settings import Settings
from coe.store import RequestLog, RunStore, ServedRequest, Store
from coe.store.database import now
from tests.conftest import DATA_DIR, EMBEDDED_POOL
from tests.ui.conftest import APP, REPLAY_POOL
from ui.comparison import ComparisonRequest, run_comparison, typed_query
from ui.jobs import Job
from ui.workbench import workbench


def shown(at: AppTest) -> str:
    """Every piece of text the page shows."""
    parts = [
        e.value
        for kind in ("markdown", "caption", "header", "subheader", "info", "warning", "error", "success")
        for e in getattr(at, kind)
    ]
    parts += [frame.value.to_string() for frame in at.dataframe]
    return "\n".join(str(p) for p in parts)


def charts(at: AppTest) -> int:
    return len(at.get("vega_lite_chart"))


def click(at: AppTest, label: str) -> AppTest:
    return next(b for b in at.button if b.label == label).click().run()


def fresh_app(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **env: str) -> AppTest:
    """The app on an empty database of its own (plus any `COE_*` overrides)."""
    monkeypatch.setenv("COE_DATABASE_URL", f"sqlite:///{tmp_path / 'coe.db'}")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return AppTest.from_file(str(APP), default_timeout=120).run()


# --------------------------------------------------------------------------- Compare


def test_compare_shows_each_router_column_with_the_composers_answers(app: AppTest, ui_env: dict[str, str]) -> None:
    assert app.session_state["pool"] == REPLAY_POOL
    assert app.session_state["routers"] == ["knn", "best-single", "all"]  # defaults: nothing to set up first
    app.multiselect(key="routers").set_value(["best-single", "all", "random"]).run()
    click(app, "Compare")
    assert not app.exception and not app.error
    comparison = app.session_state["comparison"]
    table = app.dataframe[0].value
    assert list(table.index) == ["best-single", "all", "random"]
    for router in ("best-single", "all", "random"):
        for aggregator in ("majority", "weighted"):
            answer = comparison.answer(router, aggregator)
            assert table.loc[router, aggregator] == f"{answer.choice} {'✓' if answer.correct else '✗'}"
    assert comparison.n_generated == 8  # `all` asks the 8 experts; the other columns reuse their answers
    assert "8 expert answers generated once for all columns" in shown(app)
    (best,) = comparison.route("best-single").expert_ids
    assert f"**{best}**" in shown(app)
    query = comparison.request.query
    assert query.text.split()[0] in shown(app) and query.gold is not None
    # the library gives the same answer on its own
    with compose(comparison.request.spec("best-single"), settings=Settings()) as direct:
        assert direct.ask_batch([query])[0].choice == comparison.answer("best-single", "majority").choice

    app.switch_page("experts.py").run()
    app.switch_page("compare.py").run()
    assert app.session_state["routers"] == ["best-single", "all", "random"]  # kept across pages
    assert app.dataframe[0].value.equals(table)  # the result stays on screen


def test_compare_draws_mmlu_pro_questions_by_category(app: AppTest) -> None:
    app.selectbox(key="category").set_value("law").run()
    first = app.session_state["item_id"]
    click(app, "Draw another")
    second = app.session_state["item_id"]
    by_id = {q.id: q for q in load_mmlu_pro("test", DATA_DIR)}
    assert first != second and by_id[first].category == by_id[second].category == "law"
    assert "law" in shown(app) and not app.exception


def test_compare_explains_bad_input_instead_of_failing(app: AppTest) -> None:
    app.segmented_control(key="source").set_value("Your question").run()
    click(app, "Compare")
    assert [e.value for e in app.error] == ["Type a question first (or draw one from MMLU-Pro)."]
    app.text_area(key="typed_text").set_value("Which planet is red?").run()
    app.text_area(key="typed_choices").set_value("Mars").run()
    click(app, "Compare")
    assert "Give at least two choices, or none for an open question." in shown(app)
    app.segmented_control(key="source").set_value("MMLU-Pro").run()
    app.text_input(key="item_id").set_value("no-such-id").run()
    app.multiselect(key="routers").set_value([]).run()
    click(app, "Compare")
    errors = [e.value for e in app.error]
    assert any("No MMLU-Pro test question has id 'no-such-id'" in e for e in errors)
    assert "Pick at least one router." in errors and "comparison" not in app.session_state
    assert not app.exception


def test_a_missing_pool_is_a_message_on_every_page(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    at = fresh_app(monkeypatch, tmp_path, COE_POOL="no-such-pool", COE_DATA_DIR=str(DATA_DIR))
    assert "no pool 'no-such-pool'" in at.error[0].value and not at.exception
    at.switch_page("experts.py").run()
    assert "no pool 'no-such-pool'" in at.error[0].value and not at.exception


def test_compare_asks_the_embedded_models_a_typed_question(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, weights_cache: Path
) -> None:
    at = fresh_app(monkeypatch, tmp_path, COE_CACHE_DIR=str(weights_cache), COE_DATA_DIR=str(DATA_DIR))
    try:
        assert at.session_state["pool"] == "embedded" and at.session_state["profile"] == "declared priors (no profile)"
        at.segmented_control(key="source").set_value("Your question").run()
        at.text_area(key="typed_text").set_value("Which planet is known as the Red Planet?").run()
        at.text_area(key="typed_choices").set_value("Venus\nMars\nJupiter").run()
        at.selectbox(key="typed_gold").set_value("B").run()
        at.number_input(key="max_tokens").set_value(16).run()
        next(b for b in at.button if b.label == "Compare").click().run(timeout=600)  # two CPU models, loaded once
        assert not at.exception and not at.error
        comparison = at.session_state["comparison"]
        assert comparison.n_generated == 2 and set(comparison.route("all").expert_ids) == {
            "smollm2-135m",
            "gemma3-270m",
        }
        answers = comparison.answer("all", "majority").expert_answers
        assert all(a.text.strip() and a.n_completion_tokens > 0 for a in answers)
        assert "**smollm2-135m**" in shown(at) and "**gemma3-270m**" in shown(at)
    finally:
        workbench().close()


def test_cancel_stops_a_live_comparison_between_two_experts(
    ui_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COE_POOL", str(EMBEDDED_POOL))
    bench = workbench()
    request = ComparisonRequest(
        pool=str(EMBEDDED_POOL),
        query=typed_query("Name a prime number larger than ten."),
        routers=("all",),
        aggregators=("majority",),
        k=2,
        profile="priors",
        max_tokens=16,
    )
    try:
        job = Job(partial(run_comparison, bench, request)).start()
        while not job.description.startswith("asking") and not job.wait(0.005):
            pass
        job.cancel()
        assert job.status == "cancelled"  # the page stops waiting at once
        assert job.wait(600)
        assert job.result is None and job.error is None
        assert (job.done, job.total) == (1, 2)  # the first expert answered, the second was never asked
        assert bench.lock.acquire(timeout=0)  # the next comparison can start
        bench.lock.release()
    finally:
        bench.close()


# --------------------------------------------------------------------------- Experts


def test_experts_page_shows_the_pool_and_its_measured_profiles(app: AppTest) -> None:
    app.switch_page("experts.py").run()
    assert not app.exception and not app.error
    table = app.dataframe[0].value
    assert len(table) == 8 and "gemini-1.5-flash-002" in set(table["expert"])
    assert "No expert of this pool needs a model loaded" in shown(app)
    assert charts(app) == 1 and "profiling items · overall accuracy: llama-3.1-8b-instruct" in shown(app)
    app.radio(key="experts_values").set_value("profile").run()
    assert charts(app) == 1 and not app.exception
    app.radio(key="experts_rows").set_value("skill").run()
    assert "no skill annotations" in shown(app) and not app.exception  # the run profiled without the skill router


def test_experts_page_names_what_is_wrong_with_an_uploaded_registry(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    at = fresh_app(monkeypatch, tmp_path, COE_DATA_DIR=str(DATA_DIR)).switch_page("experts.py").run()
    broken = b"experts:\n  - id: my-model\n    backend: {kind: embeded, weights: x}\n    colour: blue\n"
    at.file_uploader(key="registry_upload").upload("team.yaml", broken).run()
    message = at.error[0].value
    assert message.startswith("team.yaml is not a valid registry file, so nothing was imported")
    assert "experts[0] (id 'my-model').base: required field is missing" in message
    assert "unknown key 'colour'" in message and "embeded" in message
    assert not at.exception and "Import as a pool" not in [b.label for b in at.button]
    at.file_uploader(key="registry_upload").set_value(("notes.yaml", b"experts: [unclosed", "text/yaml")).run()
    assert "not valid YAML" in at.error[0].value and not at.exception
    missing = b"experts:\n  - {id: old, base: m, backend: {kind: replay, responses: outcomes/gone.jsonl.gz}}\n"
    at.file_uploader(key="registry_upload").set_value(("old.yaml", missing, "text/yaml")).run()
    assert "expert 'old': recorded responses" in at.error[0].value and "do not exist" in at.error[0].value


def test_experts_page_imports_a_registry_file_as_a_pool(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    at = fresh_app(monkeypatch, tmp_path, COE_DATA_DIR=str(DATA_DIR)).switch_page("experts.py").run()
    at.file_uploader(key="registry_upload").upload("team.yaml", EMBEDDED_POOL.read_bytes()).run()
    assert "team.yaml: 2 valid experts." in shown(at)
    at.text_input(key="import_name").set_value("my team").run()
    click(at, "Import as a pool")
    assert "'my team' cannot name a pool" in at.error[0].value
    at.text_input(key="import_name").set_value("team").run()
    click(at, "Import as a pool")
    assert not at.exception and at.session_state["pool"] == "team"
    assert "Imported team.yaml as pool 'team' (2 added" in shown(at)
    assert [p.name for p in Store(f"sqlite:///{tmp_path / 'coe.db'}").list_pools()] == ["team"]


# --------------------------------------------------------------------------- Evaluations


def test_evaluations_page_shows_the_stored_runs_numbers(app: AppTest, ui_database: str) -> None:
    app.switch_page("evaluations.py").run()
    assert not app.exception and not app.error
    (run,) = RunStore(Store(ui_database)).all()
    summary = EvalSummary.model_validate(run.summary)
    table = app.dataframe[0].value.set_index(["router", "aggregator"])
    assert len(table) == 8
    for result in summary.results:
        row = table.loc[result.router, result.aggregator]
        assert row["accuracy"] == result.accuracy_mean and row["± std"] == result.accuracy_std
        assert row["calls / query"] == result.calls_per_query
        assert row["$ / query"] == result.cost_per_query_usd
    # accuracy with error bars, against calls, against cost (recorded answers are priced by their estimated
    # tokens at the registry's prices), per category
    assert any(result.cost_per_query_usd > 0 for result in summary.results)
    assert charts(app) == 4
    assert "Accuracy per category" in shown(app)
    disagreements = app.dataframe[1].value
    assert len(disagreements) > 0 and {"best-single", "random", "all"} <= set(disagreements.columns)
    item = app.session_state["eval_item"]
    query = {q.id: q for q in load_mmlu_pro("test", DATA_DIR)}[item]
    assert f"gold answer {query.gold}" in shown(app) and query.text.split()[0] in shown(app)
    assert "gemini-1.5-flash-002" in shown(app)  # each expert's answer to the item
    app.selectbox(key="eval_seed").set_value(1).run()
    app.checkbox(key="eval_disagree").uncheck().run()
    assert len(app.dataframe[1].value) == summary.n_test and not app.exception


def test_evaluations_page_never_shows_gpqa_text(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, weights_cache: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'coe.db'}"
    config = EvalConfig(
        bench="gpqa",
        pool=REPLAY_POOL,
        split="random:20:0",
        routers=("best-single", "all"),
        aggregators=("majority",),
        limit=6,
    )
    run_eval(config, settings=Settings(cache_dir=weights_cache, database_url=url, data_dir=DATA_DIR))
    at = fresh_app(monkeypatch, tmp_path, COE_DATA_DIR=str(DATA_DIR)).switch_page("evaluations.py").run()
    at.checkbox(key="eval_disagree").uncheck().run()
    item = at.session_state["eval_item"]
    page = shown(at)
    assert f"gpqa item {item}: its text is never shown" in page and not at.exception
    for query in load_gpqa("diamond", DATA_DIR):  # held in memory only, never printed
        assert query.text[:60] not in page and all(
            choice not in page for choice in query.choices or () if len(choice) > 12
        )


def test_evaluations_page_without_runs_says_how_to_make_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    at = fresh_app(monkeypatch, tmp_path).switch_page("evaluations.py").run()
    assert "No evaluation run is stored" in at.info[0].value and "coe eval --bench mmlu-pro" in at.code[0].value


# --------------------------------------------------------------------------- Traffic


def test_traffic_page_summarises_the_request_log(app: AppTest) -> None:
    app.switch_page("traffic.py").run()
    assert not app.exception and not app.error
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["Requests"] == "40" and metrics["Errors"] == "3" and metrics["With fallbacks"] == "4"
    latency = app.dataframe[0].value.set_index("model")
    assert latency.loc["coe", "requests"] == 30 and latency.loc["gemini-1.5-flash-002", "requests"] == 10
    assert set(app.dataframe[1].value["failed expert"]) == {"llama-3-70b"}
    assert charts(app) == 2


def test_traffic_page_reads_only_the_window_asked_for(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    at = fresh_app(monkeypatch, tmp_path).switch_page("traffic.py").run()
    assert "No request in the service's log" in at.info[0].value
    old = ServedRequest(model="coe", status=200, experts=("a",), latency_s=1.0, created_at=now() - timedelta(days=2))
    RequestLog(Store(f"sqlite:///{tmp_path / 'coe.db'}")).add(
        [old, ServedRequest(model="coe/knn", status=200, experts=("b",))]
    )
    at.run()
    assert {m.label: m.value for m in at.metric}["Requests"] == "2"
    at.selectbox(key="traffic_window").set_value("last 24 hours").run()
    assert {m.label: m.value for m in at.metric}["Requests"] == "1"
    assert list(pd.DataFrame(at.dataframe[-1].value)["model"]) == ["coe/knn"] and not at.exception
