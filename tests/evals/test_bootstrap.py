"""The paired bootstrap interval against cases whose answer is known in closed form."""

import numpy as np
import pytest

from coe.evals.bootstrap import paired_bootstrap_interval


def paired(n_better: int, n_worse: int, n: int) -> np.ndarray:
    """Per-item differences: +1 where the router alone is right, −1 where the best single alone is."""
    return np.array([1.0] * n_better + [-1.0] * n_worse + [0.0] * (n - n_better - n_worse))


def normal_interval(means: list[float], variances: list[float], n: int) -> tuple[float, float]:
    """The mean over seeds and its 95% normal interval (the bootstrap's limit for many items)."""
    centre = float(np.mean(means))
    spread = 1.96 * np.sqrt(np.sum(variances) / n) / len(means)
    return centre - spread, centre + spread


def test_one_seed_matches_the_normal_interval_of_a_paired_difference() -> None:
    # +1 on 10% of 10,000 items, −1 on 5%: mean 0.05, variance 0.15 − 0.05² per item
    low, high = paired_bootstrap_interval([paired(1000, 500, 10_000)])
    expected = normal_interval([0.05], [0.15 - 0.05**2], 10_000)
    assert (low, high) == pytest.approx(expected, abs=4e-4)
    assert low > 0  # a win


def test_seeds_are_resampled_apart_and_averaged() -> None:
    # seed 0: +0.05 as above; seed 1: +0.01 − 0.03 = −0.02 over another 10,000 items
    low, high = paired_bootstrap_interval([paired(1000, 500, 10_000), paired(100, 300, 10_000)])
    expected = normal_interval([0.05, -0.02], [0.15 - 0.05**2, 0.04 - 0.02**2], 10_000)
    assert (low, high) == pytest.approx(expected, abs=4e-4)


def test_an_interval_straddling_zero_is_no_win_and_degenerate_cases_are_exact() -> None:
    low, high = paired_bootstrap_interval([paired(30, 28, 1000)])
    assert low < 0 < high
    assert paired_bootstrap_interval([np.zeros(500)]) == (0.0, 0.0)
    assert paired_bootstrap_interval([np.ones(20)]) == (1.0, 1.0)
    assert paired_bootstrap_interval([]) == (0.0, 0.0)
    # seeds that cancel exactly give exactly zero, not float dust that would read as a win
    assert paired_bootstrap_interval([np.full(10, 0.1), np.full(10, 0.2), np.full(10, -0.3)]) == (0.0, 0.0)


def test_the_interval_is_seeded_and_hardly_depends_on_the_seed() -> None:
    differences = [paired(607, 391, 9973)]
    assert paired_bootstrap_interval(differences) == paired_bootstrap_interval(differences)
    other = paired_bootstrap_interval(differences, seed=1)
    assert other == pytest.approx(paired_bootstrap_interval(differences), abs=3e-4)
