"""The one public way to build a composition: specs from files, pools by file or name, profiles measured,
stored and found again, every face's Composer from the same builder."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from coe.compose import (
    CompositionBuilder,
    CompositionSpec,
    RouterSpec,
    SplitProfile,
    StoredProfile,
    compose,
    parse_profile_source,
)
from coe.datasets import load_mmlu_pro
from coe.embed import STATIC, StaticEncoder
from coe.errors import ConfigError, ProfileError, RegistryError
from coe.registry import load_registry_file
from coe.resources import bundled_compositions, bundled_pools
from coe.settings import Settings
from coe.store import Store
from tests.conftest import DATA_DIR, REPO

SPLIT = SplitProfile(bench="mmlu-pro", split="random:100:0")
TEST_ITEMS = load_mmlu_pro("test", DATA_DIR)[2000:2006]


@pytest.fixture
def builder(settings: Settings) -> CompositionBuilder:
    return CompositionBuilder(settings)


def ref8_spec(router: str = "knn", **changes: object) -> CompositionSpec:
    spec = CompositionSpec(pool="replay-mmlu-pro-ref8", router=RouterSpec(name=router), profile=SPLIT)
    return spec.model_copy(update=changes)


def test_every_bundled_composition_validates_and_names_are_shorthand() -> None:
    assert set(bundled_compositions()) >= {"knn", "skill", "classifier", "best-single", "random", "embedded"}
    for path in bundled_compositions().values():
        spec = CompositionSpec.from_file(path)
        assert spec.pool in bundled_pools()
    assert CompositionSpec.load("knn").router.name == "knn"
    assert CompositionSpec.model_validate({"pool": "embedded", "aggregator": "weighted"}).aggregator.name == "weighted"


def test_a_bad_composition_file_names_the_file_and_the_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("pool: embedded\nroutr: knn\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: routr: unknown key 'routr'; allowed keys: pool, router"):
        CompositionSpec.from_file(path)
    path.write_text("pool: embedded\nrouter: {name: knn, params: {k: 5}}\n")
    with pytest.raises(ConfigError, match=r"set k on the composition"):
        CompositionSpec.from_file(path)
    with pytest.raises(ConfigError, match=r"no composition .nosuch..*knn"):
        CompositionSpec.load("nosuch")


def test_a_registry_path_in_a_composition_file_is_relative_to_that_file(tmp_path: Path) -> None:
    (tmp_path / "pools").mkdir()
    (tmp_path / "pools" / "mine.yaml").write_text(bundled_pools()["embedded"].read_text())
    (tmp_path / "c.yaml").write_text("pool: pools/mine.yaml\n")
    assert CompositionSpec.from_file(tmp_path / "c.yaml").pool == str((tmp_path / "pools" / "mine.yaml").resolve())


def test_compose_returns_a_fitted_composer_and_reuses_the_profile(builder: CompositionBuilder) -> None:
    composer = builder.compose(ref8_spec())
    assert composer.router.k == 3 and hasattr(composer.router, "experts_")
    answers = composer.ask_batch(TEST_ITEMS)
    assert [len(a.experts) for a in answers] == [3] * len(TEST_ITEMS)
    assert all(a.choice is not None and a.correct is not None for a in answers)
    again = builder.profile(SPLIT, builder.pool("replay-mmlu-pro-ref8"), composer.params)
    assert again.reused


def test_a_stored_profile_by_id_or_name_fits_the_same_router(builder: CompositionBuilder) -> None:
    registry = builder.pool("replay-mmlu-pro-ref8")
    measured = builder.profile(SPLIT, registry, ref8_spec().generation.params())
    by_split = builder.compose(ref8_spec("classifier")).router.route(TEST_ITEMS)
    by_id = builder.compose(ref8_spec("classifier", profile=StoredProfile(stored=measured.record.id)))
    by_name = builder.compose(
        ref8_spec("classifier", profile=StoredProfile(stored="replay-mmlu-pro-ref8/mmlu-pro/random:100:0"))
    )
    assert by_id.router.route(TEST_ITEMS) == by_split == by_name.router.route(TEST_ITEMS)
    outcomes, bench = builder.outcomes(
        StoredProfile(stored=measured.record.id), registry, ref8_spec().generation.params()
    )
    assert bench == "mmlu-pro" and np.array_equal(outcomes.correct, measured.outcomes.correct, equal_nan=True)
    with pytest.raises(ProfileError, match=r"no stored profile .nosuch.; stored: .*replay-mmlu-pro-ref8/mmlu-pro"):
        builder.compose(ref8_spec(profile=StoredProfile(stored="nosuch")))


def test_a_stored_profile_refuses_a_pool_it_did_not_measure(builder: CompositionBuilder, tmp_path: Path) -> None:
    measured = builder.profile(SPLIT, builder.pool("replay-mmlu-pro-ref8"), ref8_spec().generation.params())
    changed = tmp_path / "changed.yaml"
    text = bundled_pools()["replay-mmlu-pro-ref8"].read_text().replace("cost_per_mtok: 0.18", "cost_per_mtok: 0.2")
    changed.write_text(text.replace("responses: outcomes/", f"responses: {DATA_DIR}/outcomes/"))
    with pytest.raises(ProfileError, match=r"measured llama-3\.1-8b-instruct before their specs changed"):
        builder.compose(ref8_spec(pool=str(changed), profile=StoredProfile(stored=measured.record.id)))


def test_a_pool_imported_under_a_name_composes_like_its_file(builder: CompositionBuilder, settings: Settings) -> None:
    path = REPO / "registry" / "replay-mmlu-pro-ref8.yaml"
    Store(settings.database_url).import_pool("team", load_registry_file(path, DATA_DIR), source=str(path))
    named, from_file = builder.pool("team"), builder.pool(str(path))
    assert named.experts == from_file.experts and named.source == "pool:team"
    routes = builder.compose(ref8_spec("best-single", pool="team")).router.route(TEST_ITEMS)
    assert routes == builder.compose(ref8_spec("best-single", pool=str(path))).router.route(TEST_ITEMS)
    with pytest.raises(RegistryError, match=r"no pool 'nosuch'.*\(team\).*bundled pool \(embedded"):
        builder.pool("nosuch")


def test_router_parameters_reach_the_router_and_unknown_ones_are_named(builder: CompositionBuilder) -> None:
    spec = ref8_spec("classifier").model_copy(
        update={"router": RouterSpec(name="classifier", params={"threshold": 0.9}), "k": 2, "seed": 7}
    )
    router = builder.compose(spec).router
    assert (router.get_params()["threshold"], router.k, router.get_params()["random_state"]) == (0.9, 2, 7)
    with pytest.raises(ConfigError, match="router 'knn': knn has no parameter 'depth'"):
        builder.compose(ref8_spec().model_copy(update={"router": RouterSpec(name="knn", params={"depth": 3})}))


def test_routers_of_one_builder_share_one_encoder(builder: CompositionBuilder) -> None:
    knn, classifier = builder.compose(ref8_spec("knn")), builder.compose(ref8_spec("classifier"))
    assert knn.router.get_params()["encoder"] is classifier.router.get_params()["encoder"] is builder.encoder()


def test_a_composition_routes_with_the_encoder_it_names(static_encoder: StaticEncoder, tmp_path: Path) -> None:
    assert static_encoder.cache_dir is not None
    shutil.copytree(static_encoder.cache_dir / "encoders", tmp_path / "encoders")
    settings = Settings(cache_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'coe.db'}", data_dir=DATA_DIR)
    builder = CompositionBuilder(settings)
    for router in ("knn", "classifier", "skill"):
        spec = ref8_spec(router, encoder="static")
        with builder.compose(spec) as composer:
            answer = composer.ask("Which organelle makes ATP?", choices=["Ribosome", "Mitochondrion", "Nucleus"])
            assert type(composer.router.encoder) is StaticEncoder and len(answer.route.experts) == 3
    assert [p.name for p in (tmp_path / "embeddings").iterdir()] == [STATIC]  # MiniLM never ran


def test_profile_sources_parse_from_the_command_line() -> None:
    assert parse_profile_source("priors") == "priors"
    assert parse_profile_source("12") == StoredProfile(stored=12)
    assert parse_profile_source("ref8/mmlu-pro/random:1400:0") == StoredProfile(stored="ref8/mmlu-pro/random:1400:0")
    assert parse_profile_source("mmlu-pro:random:1400:0") == SplitProfile(bench="mmlu-pro", split="random:1400:0")


def test_compose_takes_a_bundled_composition_by_name(settings: Settings) -> None:
    with compose("embedded", settings=settings) as composer:
        assert list(composer.registry) == ["smollm2-135m", "gemma3-270m"]
        assert composer.router.name == "all" and composer.aggregator.name == "majority"


def test_a_composition_with_the_stacked_aggregator_and_a_budget_of_calls(builder: CompositionBuilder) -> None:
    """`aggregator: stacked` is trained for the composition's router on its profile; `k_policy: calls:1.5`
    gets that router's threshold, so a batch spends about that many calls per query, never more than k."""
    spec = ref8_spec("best-single").model_copy(update={"router": RouterSpec(name="classifier")})
    spec = CompositionSpec.model_validate({**spec.model_dump(), "aggregator": "stacked", "k_policy": "calls:1.5"})
    composer = builder.compose(spec)
    assert composer.aggregator.name == "stacked" and "classifier" in composer.aggregator.models_
    threshold = composer.calibrated["classifier"].threshold
    assert threshold is not None and 0.3 <= threshold <= 1.0
    answers = composer.ask_batch(load_mmlu_pro("test", DATA_DIR)[3000:3200])
    calls = [len(answer.experts) for answer in answers]
    assert max(calls) <= 3 and 1.0 <= np.mean(calls) <= 2.0
    assert all(answer.aggregator == "stacked" for answer in answers)
    with pytest.raises(ConfigError, match="k policy 'sometimes'"):
        CompositionSpec(pool="replay-mmlu-pro-ref8", k_policy="sometimes")
    with pytest.raises(ConfigError, match="learns from profiling items"):
        builder.compose(spec.model_copy(update={"profile": "priors"}))
