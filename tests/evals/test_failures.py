"""Evaluation runs with failing experts, bad arguments and changed pools: failures are counted and
retried, never stored as answers; nothing is stored before the run's settings are checked."""

import gzip
import json
import sqlite3
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from coe.datasets import load_gpqa, load_mmlu_pro
from tests.cli.test_cli import coe
from tests.conftest import DATA_DIR, CoeRunner

RECORDED = DATA_DIR / "outcomes" / "mmlu_pro_tiger_responses"
ITEMS = [q.id for q in load_mmlu_pro("test", DATA_DIR)[:40]]


def read_records() -> list[dict]:
    with gzip.open(RECORDED / "gemma-7b_5shots.jsonl.gz", "rt") as source:
        return [json.loads(line) for line in source]


def write_responses(path: Path, ids: list[str]) -> None:
    """A recorded expert that answers only `ids` (copied from a real recording)."""
    wanted = set(ids)
    kept = [r for r in read_records() if str(r["question_id"]) in wanted]
    with gzip.open(path, "wt") as target:
        target.writelines(json.dumps(r) + "\n" for r in kept)


def pool_file(folder: Path, partial_ids: list[str] | None = None, cost: float = 0.0) -> Path:
    """Two recorded experts; `partial` answers only `partial_ids` (every question when None)."""
    everything = [str(record["question_id"]) for record in read_records()]
    write_responses(folder / "partial.jsonl.gz", everything if partial_ids is None else partial_ids)
    path = folder / "pool.yaml"
    path.write_text(
        "experts:\n"
        f"  - {{id: whole, base: a, cost_per_mtok: {cost},"
        f" backend: {{kind: replay, responses: {RECORDED / 'Meta-Llama-3_1-8B-Instruct_5shots.jsonl.gz'}}}}}\n"
        f"  - {{id: partial, base: b, backend: {{kind: replay, responses: {folder / 'partial.jsonl.gz'}}}}}\n"
    )
    return path


def eval_args(pool: Path, ids: Path) -> list[str]:
    return ["eval", "--bench", "mmlu-pro", "--pool", str(pool), "--split", f"ids:{ids}", "--routers", "best-single,all"]


def test_failed_generations_are_counted_and_loud_and_resume_asks_again(env: dict[str, str], tmp_path: Path) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(ITEMS[:20]))
    everything = [str(record["question_id"]) for record in read_records()]
    pool = pool_file(tmp_path, [i for i in everything if int(i) % 4])  # `partial` lacks every 4th question
    summary = tmp_path / "out.json"
    args = [*eval_args(pool, ids), "--aggregators", "majority", "--limit", "40", "--json", str(summary)]
    first = coe(*args, "--max-failure-rate", "0.01", env=env, check=False)
    assert first.returncode == 6 and "Traceback" not in first.stderr
    assert "of the run's generations failed (more than --max-failure-rate 0.01)" in first.stderr
    assert "--resume" in first.stderr and "failed generations (" in first.stdout
    with sqlite3.connect(tmp_path / "coe.db") as db:
        tested = [item for (item,) in db.execute("select distinct item_id from run_results")]
    missing = sum(int(item) % 4 == 0 for item in tested)
    written = json.loads(summary.read_text())
    assert missing > 0 and written["failures"] == [{"expert": "partial", "n_generations": 40, "n_failed": missing}]

    write_responses(tmp_path / "partial.jsonl.gz", everything)  # the expert is fixed: every item recorded
    again = coe("eval", "--resume", written["run_id"], "--json", str(summary), env=env)
    assert f"asking again the {missing} item(s) whose generations failed" in again.stdout
    assert json.loads(summary.read_text())["failures"] == []
    with sqlite3.connect(tmp_path / "coe.db") as db:
        assert db.execute("select count(*) from run_generations where error is not null").fetchone() == (0,)
        query = "select count(*), count(distinct item_id) from run_results where router='all'"
        assert db.execute(query).fetchone() == (40, 40)


def test_resume_refuses_a_pool_whose_experts_changed(env: dict[str, str], tmp_path: Path) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(ITEMS[:20]))
    pool = pool_file(tmp_path)
    summary = tmp_path / "out.json"
    coe(*eval_args(pool, ids), "--aggregators", "majority", "--limit", "5", "--json", str(summary), env=env)
    pool_file(tmp_path, cost=1.0)
    result = coe("eval", "--resume", json.loads(summary.read_text())["run_id"], env=env, check=False)
    assert result.returncode == 6 and "was started on other experts" in result.stderr


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--k", "50", "--routers", "knn,all"], "--k 50 is more than the pool's 2 experts"),
        (["--seeds", "0,0"], "seeds: give one or more distinct seeds"),
        (["--seeds", "garbage"], "--seeds: expected comma-separated integers"),
        (["--routers", ""], "--routers: name at least one; known: all, best-single"),
        (["--routers", "knn,smart"], "routers: unknown 'smart'; known: all, best-single"),
        (["--aggregators", "vote"], "aggregators: unknown 'vote'; known: llm, majority, stacked, weighted"),
        (["--limit", "-1"], "limit: Input should be greater than or equal to 1"),
        (["--k", "0"], "k: Input should be greater than or equal to 1"),
        (["--chunk-size", "0"], "chunk_size: Input should be greater than or equal to 1"),
        (["--max-cost-usd", "-1"], "max_cost_usd: Input should be greater than 0"),
        (["--bench", "nosuch"], "bench: Input should be 'mmlu-pro' or 'gpqa'"),
        (["--split", "random:1400:x"], "expected random:N:SEED with integers"),
        (["--split", "random:abc"], "expected random:N:SEED with integers, e.g. random:1400:0"),
    ],
)
def test_bad_eval_arguments_fail_in_one_line_and_store_no_run(
    env: dict[str, str], tmp_path: Path, extra: list[str], message: str, coe_here: CoeRunner
) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(ITEMS[:20]))
    pool = pool_file(tmp_path)
    options = {"--bench": "mmlu-pro", "--pool": str(pool), "--split": f"ids:{ids}", "--routers": "all"}
    options.update(zip(extra[::2], extra[1::2], strict=True))
    result = coe_here("eval", *(part for pair in options.items() for part in pair), env=env)
    assert result.returncode in (2, 4, 6), result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert "mmlu-pro" not in coe_here("runs", "list", env=env).stdout  # nothing was stored


class EchoingServer(BaseHTTPRequestHandler):
    """A provider that refuses every request with HTTP 400, quoting the prompt in its error message."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        quoted = body["messages"][-1]["content"]
        payload = json.dumps({"error": {"message": f"cannot process: {quoted}", "type": "invalid_request_error"}})
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(payload.encode())

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def echoing_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), EchoingServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_gpqa_text_quoted_in_provider_errors_is_never_stored_or_printed(
    env: dict[str, str], tmp_path: Path, echoing_server: str
) -> None:
    pool = tmp_path / "echo.yaml"
    pool.write_text(
        "experts:\n"
        f"  - {{id: echo, base: e, backend: {{kind: litellm, model: openai/echo, api_base: '{echoing_server}',"
        " api_key_env: LOCAL_KEY, num_retries: 0}}\n"
    )
    summary, report = tmp_path / "out.json", tmp_path / "report"
    run = coe(
        "eval", "--bench", "gpqa", "--pool", str(pool), "--split", "random:20:0", "--routers", "best-single",
        "--aggregators", "majority", "--limit", "4", "--max-failure-rate", "1", "--json", str(summary), env=env,
    )  # fmt: skip
    coe("report", json.loads(summary.read_text())["run_id"], "--output", str(report), env=env)
    traced = coe("runs", "trace", json.loads(summary.read_text())["run_id"], _first_item(tmp_path), env=env)
    written = [
        (tmp_path / "coe.db").read_bytes().decode("utf-8", "replace"),
        summary.read_text(),
        *(path.read_text() for path in report.glob("*.md")),
        run.stdout + run.stderr,
        traced.stdout,
    ]
    assert "message withheld" in traced.stdout  # the failure is shown, its quoted text is not
    fragments = [q.text[:40] for q in load_gpqa("diamond", DATA_DIR)]  # never printed: compared in memory only
    leaked = sum(fragment in text for fragment in fragments for text in written)
    assert leaked == 0


def _first_item(tmp_path: Path) -> str:
    with sqlite3.connect(tmp_path / "coe.db") as db:
        return db.execute("select item_id from run_results limit 1").fetchone()[0]
