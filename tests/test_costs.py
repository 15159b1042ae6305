"""A per-query cost cap on a recorded pool whose prices and answers are known: a cap that admits every
expert changes nothing, one that cannot afford the priciest expert routes around it (and a failed pick
is replaced only by an expert no pricier), one that fits fewer experts than the route picks keeps the
best-ranked that fit, and one below every expert is refused naming the cheapest."""

from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from pydantic import ValidationError

from coe.aggregate import MajorityVote
from coe.answers import question_prompt
from coe.compose import CompositionSpec, compose
from coe.composer import BatchResult, Composer
from coe.costs import call_cost_bound
from coe.errors import ConfigError
from coe.recovery import Recovery
from coe.registry import Registry
from coe.routers import AllRouter, BestSingleRouter, Router
from coe.schema import ExpertSpec, Query, ReplayBackendSpec
from coe.settings import Settings
from coe.types import GenerationParams
from tests import synthetic_pool
from tests.conftest import DATA_DIR, REPO
from tests.synthetic_pool import stated, wrong

PRICES = {"sage": 100.0, "good": 10.0, "cheap": 1.0}
"""USD per million tokens. With 1000 tokens of budget and a prompt under 100 tokens, one call may cost
about 0.1 (sage), 0.01 (good) and 0.001 USD (cheap)."""
PARAMS = GenerationParams(max_tokens=1000)


def sage(query: Query, rng: np.random.Generator) -> str:
    return stated(query.gold or "A")


def good(query: Query, rng: np.random.Generator) -> str | None:
    if int(query.id) % 5 == 0:
        return None  # no record: a failed answer
    return stated(query.gold or "A") if rng.random() < 0.8 else stated(wrong(query, rng))


def cheap(query: Query, rng: np.random.Generator) -> str:
    return stated(wrong(query, rng))


class Priced(NamedTuple):
    test: list[Query]
    composer: Composer
    routers: dict[str, Router]
    """best-single picks sage; all ranks sage, good, cheap; pinned picks cheap."""

    def compare(self, cap: float | None) -> dict[str, BatchResult]:
        self.composer.max_cost_usd = cap
        results = self.composer.compare(self.test, self.routers, {"majority": MajorityVote()})
        return {router: result for (router, _), result in results.items()}


@pytest.fixture
def priced(tmp_path: Path) -> Priced:
    items, test = synthetic_pool.queries(60, seed=1), synthetic_pool.queries(100, seed=2)
    recorded = synthetic_pool.pool(tmp_path, items + test, {"sage": sage, "good": good, "cheap": cheap})
    registry = Registry(
        [e.model_copy(update={"cost_per_mtok": PRICES[e.id]}) for e in recorded.experts], source="priced"
    )
    assert max(len(question_prompt(q).text) for q in test) < 400
    runner = synthetic_pool.scheduler()
    outcomes = synthetic_pool.profiled(registry, items, runner)
    composer = Composer(registry, backends=runner.backends, scheduler=runner, params=PARAMS)
    routers = {
        "best-single": BestSingleRouter().fit(outcomes),
        "all": AllRouter().fit(outcomes),
        "pinned": BestSingleRouter(expert="cheap").fit(outcomes),
    }
    return Priced(test, composer, routers)


def test_a_call_may_cost_its_prompt_at_four_characters_a_token_plus_the_whole_budget() -> None:
    expert = ExpertSpec(id="x", base="x", cost_per_mtok=2.0, backend=ReplayBackendSpec(responses=Path("x.jsonl")))
    assert call_cost_bound(expert, n_chars=400, max_tokens=900) == pytest.approx((100 + 900) * 2.0 / 1e6)


def test_a_cap_that_admits_every_expert_changes_nothing(priced: Priced) -> None:
    free, roomy = priced.compare(None), priced.compare(1.0)
    for router in free:
        assert [r.model_dump() for r in roomy[router].routes] == [r.model_dump() for r in free[router].routes]
        assert [(a.experts, a.choice) for a in roomy[router].answers] == [
            (a.experts, a.choice) for a in free[router].answers
        ]
    assert {a.experts for a in free["best-single"].answers} == {("sage",)}
    assert {a.experts for a in free["all"].answers} == {("sage", "good", "cheap")}


def test_a_cap_below_the_priciest_expert_routes_around_it(priced: Priced) -> None:
    free, capped = priced.compare(None), priced.compare(0.05)
    # best-single's pick, sage, may cost 0.1: the next-ranked expert answers instead
    assert np.mean([a.correct for a in free["best-single"].answers]) == 1.0
    assert {tuple(r.expert_ids) for r in capped["best-single"].routes} == {("good",)}
    assert np.mean([a.correct for a in capped["best-single"].answers]) < 1.0
    assert all("sage" not in a.experts for result in capped.values() for a in result.answers)
    # all experts: good and cheap together fit 0.05
    assert {a.experts for a in capped["all"].answers} == {("good", "cheap")}
    assert all("within 0.05 USD" in route.reason for route in capped["all"].routes)


def test_a_failed_pick_is_replaced_only_by_an_expert_that_still_fits(priced: Priced) -> None:
    priced.composer.recovery = Recovery(replace=True)
    roomy, tight = priced.compare(0.05), priced.compare(0.011)
    assert {tuple(c.expert for c in r.fallbacks) for r in roomy["best-single"].routes} == {("cheap",)}
    replaced = [a for a in roomy["best-single"].answers if a.fallbacks]
    assert len(replaced) == 20  # good has no record of every fifth item
    assert all(a.experts == ("good", "cheap") and a.fallbacks[0].replacement == "cheap" for a in replaced)
    # good alone (about 0.0101) fits 0.011, good and cheap together (about 0.0111) do not: no replacement
    assert {tuple(r.fallbacks) for r in tight["best-single"].routes} == {()}
    unreplaced = [a for a in tight["best-single"].answers if a.fallbacks]
    assert len(unreplaced) == 20 and all(a.fallbacks[0].replacement is None for a in unreplaced)


def test_a_route_over_the_cap_keeps_its_best_ranked_experts_that_fit(priced: Priced) -> None:
    routes = {router: result.routes for router, result in priced.compare(0.011).items()}
    assert {tuple(route.expert_ids) for route in routes["all"]} == {("good",)}  # cheap no longer fits beside it
    assert {tuple(route.expert_ids) for route in routes["pinned"]} == {("cheap",)}
    assert all("1 expert(s) within 0.011 USD" in route.reason for route in routes["all"])


def test_a_cap_below_every_expert_is_refused_naming_the_cheapest(
    priced: Priced,
) -> None:
    with pytest.raises(ConfigError, match=r"0.0005 USD per query \(--max-cost-usd, max_cost_usd\) admits no expert"):
        priced.compare(0.0005)
    with pytest.raises(ConfigError, match=r"the cheapest, cheap, may cost 0\.0010\d\d USD"):
        priced.compare(0.0005)


def test_a_composition_carries_its_cap_to_the_composer(weights_cache: Path, tmp_path: Path) -> None:
    pool = str(REPO / "registry" / "replay-mmlu-pro-ref8.yaml")
    settings = Settings(cache_dir=weights_cache, database_url=f"sqlite:///{tmp_path / 'coe.db'}", data_dir=DATA_DIR)
    spec = CompositionSpec(pool=pool, router="best-single", profile="priors", max_cost_usd=0.002)
    assert compose(spec, settings=settings).max_cost_usd == 0.002
    with pytest.raises(ValidationError, match="max_cost_usd"):
        CompositionSpec(pool=pool, max_cost_usd=-1)
