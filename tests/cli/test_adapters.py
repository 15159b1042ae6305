"""`coe adapters`, run as users run it (the training itself is tested in tests/adapters)."""

from pathlib import Path

import pytest

from coe.adapters.data import read_examples
from tests.cli.test_cli import coe


@pytest.fixture
def env(tmp_path: Path, weights_cache: Path) -> dict[str, str]:
    return {"COE_DATABASE_URL": f"sqlite:///{tmp_path / 'coe.db'}", "COE_CACHE_DIR": str(weights_cache)}


def test_data_writes_a_skill_dataset(env: dict[str, str], tmp_path: Path) -> None:
    result = coe("adapters", "data", "arithmetic", "--n", "5", "--out", str(tmp_path / "a.jsonl"), env=env)
    assert "wrote 5 arithmetic examples" in result.stdout
    assert [e.response.startswith("The answer is ") for e in read_examples(tmp_path / "a.jsonl")] == [True] * 5


def test_unknown_skill_and_unknown_base_exit_with_one_clear_line(env: dict[str, str], tmp_path: Path) -> None:
    skill = coe("adapters", "data", "poetry", "--out", str(tmp_path / "p.jsonl"), env=env, check=False)
    assert skill.returncode == 3 and "unknown skill 'poetry'; known: arithmetic, mmlu-pro-letter" in skill.stderr
    (tmp_path / "d.jsonl").write_text('{"prompt": "x", "response": "y"}\n')
    args = ("adapters", "train", "--base", "nope", "--data", str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "o"))
    base = coe(*args, env=env, check=False)
    assert base.returncode == 3 and "unknown expert 'nope'" in base.stderr
    assert not (tmp_path / "o").exists()
