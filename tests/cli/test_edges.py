"""Bad input at the command line: one clear line naming what is wrong, a non-zero exit, no traceback;
failures never look like answers."""

from pathlib import Path

import pytest

from coe import Composer, QueryError
from coe.registry import Registry
from tests.cli.test_cli import coe
from tests.conftest import CoeRunner

DEAD_POOL = """
experts:
  - id: dead-api
    base: x
    backend: {kind: litellm, model: openai/x, api_base: "http://127.0.0.1:9/v1", api_key_env: LOCAL_KEY, num_retries: 0}
  - id: missing-gguf
    base: y
    backend: {kind: embedded, gguf: missing.gguf}
"""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["   "], "the question is empty"),
        (["x", "--choices", "a,,b"], "option 2 is blank"),
        (["x", "--choices", "Mars,Mars"], "option 'Mars' appears twice"),
        (["x", "--choices", '["a, b"'], "--choices: not a JSON list of strings"),
        (["x", "--choices", ",".join("abcdefghijk")], "needs 1 to 10 options, got 11"),
        (["x", "--router", "smart"], "unknown router 'smart'; known: all, best-single"),
        (["x", "--composition", "nosuch"], "no composition 'nosuch'"),
    ],
)
def test_bad_questions_and_options_are_refused_in_one_line(
    env: dict[str, str], args: list[str], message: str, coe_here: CoeRunner
) -> None:
    result = coe_here("ask", *args, env=env)
    assert result.returncode in (2, 3), result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_question_with_no_successful_expert_exits_non_zero_and_says_why(env: dict[str, str], tmp_path: Path) -> None:
    pool = tmp_path / "dead.yaml"
    pool.write_text(DEAD_POOL)
    result = coe("ask", "2+2?", "--pool", str(pool), env=env, check=False)
    assert result.returncode == 5
    assert "dead-api → -: error (connection)" in result.stdout
    assert "missing-gguf → -: error (unavailable)" in result.stdout and "missing.gguf" in result.stdout
    assert "no expert answered (dead-api: " in result.stderr and "Traceback" not in result.stderr


def test_sdk_refuses_one_string_as_choices(tmp_path: Path) -> None:
    pool = tmp_path / "dead.yaml"
    pool.write_text(DEAD_POOL)
    composer = Composer(Registry.from_file(pool))
    with pytest.raises(QueryError, match="choices must be a list of options, not one string"):
        composer.ask("Which planet?", choices="Mars")  # type: ignore[arg-type]


def test_options_with_commas_come_as_a_json_list_or_repeated(env: dict[str, str], tmp_path: Path) -> None:
    pool = tmp_path / "dead.yaml"
    pool.write_text(DEAD_POOL)
    json_list = coe("ask", "x", "--pool", str(pool), "--choices", '["1, 2", "3"]', "--json", env=env, check=False)
    repeated = coe("ask", "x", "--pool", str(pool), "--choice", "1, 2", "--choice", "3", "--json", env=env, check=False)
    for result in (json_list, repeated):
        assert result.returncode == 5 and '"query_id": "q0"' in result.stdout  # parsed, asked, all experts failed


MISSING_GGUF = "experts:\n  - {id: local, base: x, backend: {kind: embedded, gguf: nowhere/model.gguf}}\n"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (MISSING_GGUF, "GGUF file "),
        ("experts:\n  - {id: w, base: x, backend: {kind: embedded, weights: nosuch}}\n", "unknown weights 'nosuch'"),
        ("experts:\n  - {id: r, base: x, backend: {kind: replay, responses: gone.jsonl.gz}}\n", "gone.jsonl.gz do"),
        ("experts:\n  - {id: b, base: x, params_b: true, backend: {kind: embedded, weights: x}}\n", "valid number"),
        ("experts:\n  - {id: c, base: x, context: '4096', backend: {kind: embedded, weights: x}}\n", "valid integer"),
        ("- just a list\n", "Input should be a valid dictionary"),
    ],
)
def test_registry_import_checks_what_experts_point_at(
    env: dict[str, str], tmp_path: Path, content: str, message: str, coe_here: CoeRunner
) -> None:
    path = tmp_path / "pool.yaml"
    path.write_text(content)
    result = coe_here("registry", "import", str(path), env=env)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert "nothing was written" in result.stderr


def test_a_copied_registry_names_the_adapter_it_lost_and_no_check_imports_anyway(
    env: dict[str, str], tmp_path: Path, coe_here: CoeRunner
) -> None:
    copied = tmp_path / "lora.yaml"
    copied.write_text((Path(__file__).parents[2] / "registry" / "embedded-lora.yaml").read_text())
    result = coe_here("registry", "import", str(copied), env=env)
    assert result.returncode == 2
    assert f"adapter {tmp_path.parent / 'adapters' / 'smollm2-arithmetic' / 'adapter.gguf'} does not exist" in (
        result.stderr
    )
    unchecked = tmp_path / "later.yaml"
    unchecked.write_text(MISSING_GGUF)
    assert coe_here("registry", "import", str(unchecked), "--no-check", env=env).returncode == 0


@pytest.mark.parametrize("kind", ["folder", "binary"])
def test_a_folder_or_a_binary_file_is_not_a_registry(
    env: dict[str, str], tmp_path: Path, kind: str, coe_here: CoeRunner
) -> None:
    path = tmp_path / "thing"
    if kind == "folder":
        path.mkdir()
    else:
        path.write_bytes(bytes(range(256)) * 4)
    result = coe_here("registry", "import", str(path), env=env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert ("a folder, not a registry file" if kind == "folder" else "not a text file") in result.stderr


def test_a_file_named_like_markup_is_reported_verbatim(
    env: dict[str, str], tmp_path: Path, coe_here: CoeRunner
) -> None:
    result = coe_here("registry", "import", str(tmp_path / "[/x].yaml"), env=env)
    assert result.returncode == 2 and "[/x].yaml: no such registry file" in result.stderr


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("COE_THREADS", "abc", "invalid environment: COE_THREADS: Input should be a valid integer"),
        ("COE_DATABASE_URL", "mongodb://host/db", "cannot use the database mongodb://host/db: coe runs on SQLite"),
        ("COE_DATABASE_URL", "not a url", "is not a SQLAlchemy URL"),
    ],
)
def test_a_bad_environment_is_named_in_one_line(
    env: dict[str, str], variable: str, value: str, message: str, coe_here: CoeRunner
) -> None:
    result = coe_here("registry", "list", env={**env, variable: value})
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_a_file_that_is_not_a_database_is_named(env: dict[str, str], tmp_path: Path, coe_here: CoeRunner) -> None:
    (tmp_path / "junk.db").write_bytes(bytes(range(256)) * 16)
    result = coe_here("registry", "list", env={**env, "COE_DATABASE_URL": f"sqlite:///{tmp_path / 'junk.db'}"})
    assert result.returncode == 2 and "file is not a database" in result.stderr


def test_a_report_is_written_beside_the_database_and_says_where(
    env: dict[str, str], tmp_path: Path, coe_here: CoeRunner
) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(str(i) for i in range(70, 90)))
    pool = Path(__file__).parents[2] / "registry" / "replay-mmlu-pro-ref8.yaml"
    args = ["--bench", "mmlu-pro", "--pool", str(pool), "--split", f"ids:{ids}", "--routers", "best-single"]
    evaluated = coe_here("eval", *args, "--aggregators", "majority", "--limit", "10", env=env)
    run_id = evaluated.stdout.split("run id: ")[1].split()[0]
    result = coe_here("report", run_id, env=env)
    assert result.returncode == 0 and f"wrote {tmp_path / 'reports' / run_id}.md" in result.stdout
