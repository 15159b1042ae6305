"""`coe demo`: real CPU models first, then routing over recorded answers against its baselines."""

from pathlib import Path

from tests.conftest import CoeRunner


def test_demo_runs_live_models_then_shows_what_routing_is_for(
    tmp_path: Path, weights_cache: Path, coe_here: CoeRunner
) -> None:
    env = {"COE_DATABASE_URL": f"sqlite:///{tmp_path / 'coe.db'}", "COE_CACHE_DIR": str(weights_cache)}
    result = coe_here("demo", "--max-tokens", "4", "--routed", "60", env=env)
    assert result.returncode == 0, result.stderr
    live, routed = result.stdout.split("near chance", 1)
    assert "coe demo: MMLU-Pro validation, one question per category" in live and "model loads 2" in live
    assert "where the classifier router sends each category" in routed
    assert "law" in routed and "gemini-1.5-flash-002" in routed
    for label in ("routed ", "best single ", "all 8 voting ", "oracle ceiling "):
        assert label in routed
    summary = next(line for line in routed.splitlines() if line.startswith("routed "))
    accuracies = {
        label: float(summary.split(label, 1)[1].split("%", 1)[0])
        for label in ("routed ", "best single ", "oracle ceiling ")
    }
    assert accuracies["oracle ceiling "] >= max(accuracies["routed "], accuracies["best single "])
