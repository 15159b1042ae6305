"""The `coe` command, run as users run it: a real process, real models, a real SQLite database."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import MetaData, create_engine

from coe.embed import StaticEncoder

REPO = Path(__file__).resolve().parents[2]


def coe(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", "from coe.cli import main; main()", *args]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env}, cwd=REPO, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"coe {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


RUN_TABLES = ("runs", "run_generations", "run_routes", "run_results")


@pytest.fixture
def env(tmp_path: Path, weights_cache: Path) -> dict[str, str]:
    return {"COE_DATABASE_URL": f"sqlite:///{tmp_path / 'coe.db'}", "COE_CACHE_DIR": str(weights_cache)}


def test_ask_json_returns_real_generations_from_every_expert(env: dict[str, str]) -> None:
    result = coe(
        "ask",
        "Which planet is known as the Red Planet?",
        "--choices",
        "Venus,Mars,Jupiter,Saturn",
        "--json",
        "--max-tokens",
        "64",
        env=env,
    )
    answer = json.loads(result.stdout)
    assert answer["experts"] == ["smollm2-135m", "gemma3-270m"]
    assert [a["expert"] for a in answer["expert_answers"]] == answer["experts"]
    assert all(a["text"].strip() and a["n_completion_tokens"] > 0 for a in answer["expert_answers"])
    assert answer["expert_answers"][0]["text"] != answer["expert_answers"][1]["text"]
    assert answer["route"]["reason"] == "all 2 experts"
    assert answer["choice"] in (None, "A", "B", "C", "D")
    assert answer["timings"]["total_s"] > 0

    one = coe("ask", "Hi", "--router", "random", "--k", "1", "--max-tokens", "8", "--json", env=env)
    assert len(json.loads(one.stdout)["experts"]) == 1 and json.loads(one.stdout)["route"]["router"] == "random"


def test_registry_import_list_show_export_remove(env: dict[str, str], tmp_path: Path) -> None:
    pool = REPO / "registry" / "embedded.yaml"
    assert "2 added" in coe("registry", "import", str(pool), env=env).stdout
    assert "0 added, 0 updated, 2 unchanged" in coe("registry", "import", str(pool), env=env).stdout
    listing = coe("registry", "list", env=env).stdout
    assert "smollm2-135m" in listing and "gemma3-270m" in listing
    assert "weights: smollm2-135m-instruct-q4_1" in coe("registry", "show", "smollm2-135m", env=env).stdout
    exported = tmp_path / "exported.yaml"
    coe("registry", "export", "-o", str(exported), env=env)
    # Same experts from another file: nothing added, only their recorded source changes.
    assert "0 added, 2 updated, 0 unchanged" in coe("registry", "import", str(exported), env=env).stdout
    coe("registry", "remove", "gemma3-270m", env=env)
    assert "gemma3-270m" not in coe("registry", "list", env=env).stdout


def test_broken_registry_file_exits_2_with_one_clear_line_and_writes_nothing(
    env: dict[str, str], tmp_path: Path
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text((REPO / "registry" / "embedded.yaml").read_text().replace("params_b: 0.27", "params_b: big"))
    result = coe("registry", "import", str(broken), env=env, check=False)
    assert result.returncode == 2
    assert f"{broken}: experts[1] (id 'gemma3-270m').params_b: Input should be a valid number" in result.stderr
    assert "Traceback" not in result.stderr
    assert "smollm2" not in coe("registry", "list", env=env).stdout


def test_unknown_expert_exits_3(env: dict[str, str]) -> None:
    result = coe("registry", "show", "gpt-9", env=env, check=False)
    assert result.returncode == 3
    assert "unknown expert 'gpt-9'" in result.stderr and "coe registry list" in result.stderr


def test_profile_stores_and_then_reuses_a_profile(
    env: dict[str, str], tmp_path: Path, static_encoder: StaticEncoder
) -> None:
    # skill annotation uses the default (static) encoder: the fixture has distilled it into the cache
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(str(qid) for qid in range(70, 110)))
    args = ("profile", "--pool", str(REPO / "registry" / "replay-mmlu-pro-ref8.yaml"), "--split", f"ids:{ids}")
    first = coe(*args, env=env).stdout
    assert "(stored)" in first and "40 items" in first
    assert "gemini-1.5-flash-002" in first and "strongest skills" in first
    assert "(reused the stored profile)" in coe(*args, env=env).stdout


def test_a_pool_imported_by_name_is_profiled_and_listed(env: dict[str, str], tmp_path: Path) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(str(qid) for qid in range(70, 90)))
    imported = coe(
        "registry", "import", str(REPO / "registry" / "replay-mmlu-pro-ref8.yaml"), "--name", "team", env=env
    )
    assert "as pool 'team': 8 added" in imported.stdout and "--pool team" in imported.stdout
    pools = coe("registry", "pools", env=env).stdout
    assert "team" in pools and "embedded-lora" in pools  # imported and bundled pools side by side
    profiled = coe("profile", "--pool", "team", "--split", f"ids:{ids}", "--no-annotate", env=env).stdout
    assert "team/mmlu-pro/ids:" in profiled and "(stored)" in profiled
    listing = coe("profiles", "list", env=env).stdout
    assert "team/mmlu-pro/ids:" in listing and "yes" in listing
    unknown = coe("profile", "--pool", "nosuch", "--split", f"ids:{ids}", env=env, check=False)
    assert unknown.returncode == 2 and "no pool 'nosuch'" in unknown.stderr and "team" in unknown.stderr


def test_eval_json_summary_then_trace_an_item(env: dict[str, str], tmp_path: Path) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(str(qid) for qid in range(70, 110)))
    summary_path = tmp_path / "out.json"
    run = coe(
        "eval",
        "--bench",
        "mmlu-pro",
        "--pool",
        str(REPO / "registry" / "replay-mmlu-pro-ref8.yaml"),
        "--split",
        f"ids:{ids}",
        "--routers",
        "best-single,random,all,oracle",
        "--aggregators",
        "majority,weighted",
        "--k",
        "3",
        "--seeds",
        "0,1",
        "--limit",
        "30",
        "--json",
        str(summary_path),
        env=env,
    )
    # stderr is a pipe here, as in a CI log or under nohup: progress comes as lines, ending at the total
    assert "seed 1: evaluating 30 test items: 0/30" in run.stderr
    assert "seed 1: evaluating 30 test items: 30/30 after" in run.stderr
    summary = json.loads(summary_path.read_text())
    assert set(summary) >= {"bench", "pool", "split", "seeds", "n_test", "results", "best_single", "oracle"}
    assert summary["seeds"] == [0, 1] and summary["n_test"] == 30
    row = summary["results"][0]
    assert set(row) >= {
        "router",
        "aggregator",
        "k",
        "accuracy_mean",
        "accuracy_std",
        "calls_per_query",
        "n_loads",
        "wall_s",
    }
    assert set(summary["best_single"]) >= {"expert", "accuracy_mean"} and "accuracy_mean" in summary["oracle"]

    run_id = summary["run_id"]
    assert run_id in coe("runs", "list", env=env).stdout
    import sqlite3

    with sqlite3.connect(tmp_path / "coe.db") as connection:
        (item,) = connection.execute("select item_id from run_results limit 1").fetchone()
    trace = coe("runs", "trace", run_id, item, env=env).stdout
    assert "routes of item" in trace and "best single expert by profiling accuracy" in trace
    assert "fused results" in trace and "oracle" in trace
    report = coe("report", run_id, "--output", str(tmp_path / "report"), env=env).stdout
    assert "wrote" in report and (tmp_path / "report" / f"{run_id}.md").exists()

    assert f"deleted run {run_id}" in coe("runs", "delete", run_id, env=env).stdout
    with sqlite3.connect(tmp_path / "coe.db") as connection:
        left = [connection.execute(f"select count(*) from {table}").fetchone()[0] for table in RUN_TABLES]
        (profiles,) = connection.execute("select count(*) from profiles").fetchone()
    assert left == [0, 0, 0, 0] and profiles == 1  # the run is gone; its profile (one ids: split) stays
    again = coe("runs", "delete", run_id, env=env, check=False)
    assert again.returncode == 6 and f"no run {run_id!r}" in again.stderr


def test_a_literal_api_key_never_reaches_the_database_or_the_output_in_clear(database_url: str, tmp_path: Path) -> None:
    secret = "0123456789abcdef"  # the middle of the key: none of it may show anywhere
    pool = tmp_path / "keyed.yaml"
    pool.write_text(
        "experts:\n  - id: api\n    base: gpt-x\n"
        f"    backend: {{kind: litellm, model: openai/gpt-x, api_key: sk-live-{secret}-xyz}}\n"
    )
    env = {"COE_DATABASE_URL": database_url, "COE_CACHE_DIR": str(tmp_path)}
    exported = tmp_path / "exported.yaml"
    runs = [
        coe("registry", "import", str(pool), env=env),
        coe("registry", "list", env=env),
        coe("registry", "show", "api", env=env),
        coe("registry", "export", env=env),
        coe("registry", "export", "-o", str(exported), env=env),
    ]
    assert "warning:" in runs[0].stderr and "api_key_env" in runs[0].stderr and "sk-…xyz" in runs[0].stderr
    assert "api_key: sk-…xyz" in runs[2].stdout and "api_key: sk-…xyz" in runs[3].stdout
    printed = [run.stdout + run.stderr for run in runs] + [exported.read_text()]
    assert [secret in text for text in printed] == [False] * len(printed)
    assert secret not in database_text(database_url)
    assert '"api_key": "sk-\\u2026xyz"' in database_text(database_url)  # the mask, as JSON writes it


def database_text(url: str) -> str:
    """Every row of every table as text, and for SQLite the raw bytes of the file and its WAL."""
    engine = create_engine(url)
    tables = MetaData()
    tables.reflect(engine)
    with engine.connect() as connection:
        rows = [" ".join(map(str, row)) for table in tables.sorted_tables for row in connection.execute(table.select())]
    engine.dispose()
    if engine.dialect.name == "sqlite":
        files = Path(str(engine.url.database)).parent.glob("coe.db*")
        rows += [path.read_bytes().decode("utf-8", "replace") for path in files]
    return "\n".join(rows)


def test_an_unknown_encoder_is_refused_before_anything_runs(env: dict[str, str]) -> None:
    pool = str(REPO / "registry" / "replay-mmlu-pro-ref8.yaml")
    args = ("eval", "--bench", "mmlu-pro", "--pool", pool, "--split", "random:140:0", "--encoder", "bert")
    result = coe(*args, env=env, check=False)
    assert result.returncode == 2 and "'bert' is not one of 'minilm'" in result.stderr
