import re
from pathlib import Path

import pytest

from coe.errors import LiteralSecretWarning, RegistryError, UnknownExpertError
from coe.registry import Registry, dump_registry, load_registry_file
from coe.schema import EmbeddedBackendSpec
from coe.store import Store

GOOD = """
experts:
  - id: small
    base: org/small
    backend: {kind: embedded, weights: smollm2-135m-instruct-q4_1}
    params_b: 0.135
    skills: {overall: 0.2, math: 0.4}
  - id: api
    base: gpt-x
    backend: {kind: litellm, model: openai/gpt-x, api_base: "http://127.0.0.1:9/v1", api_key_env: GPT_X_KEY}
    cost_per_mtok: 2.5
    tags: [api]
  - id: small-law
    base: small
    adapter: adapters/law.gguf
"""


def write(tmp_path: Path, text: str, name: str = "pool.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_valid_file_loads_and_adapters_inherit_their_base_backend(tmp_path: Path) -> None:
    experts = load_registry_file(write(tmp_path, GOOD))
    by_id = {e.id: e for e in experts}
    assert list(by_id) == ["small", "api", "small-law"]
    assert by_id["small-law"].is_adapter
    assert (
        by_id["small-law"].load_key
        == by_id["small"].load_key
        == "embedded:smollm2-135m-instruct-q4_1:threads=auto:ctx=4096"
    )
    assert isinstance(by_id["small-law"].backend, EmbeddedBackendSpec)
    assert by_id["small-law"].adapter == (tmp_path / "adapters/law.gguf").resolve()


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "params_b: 0.135",
            "params_bb: 0.135",
            "experts[0] (id 'small').params_bb: unknown key 'params_bb'; allowed keys: id, backend",
        ),
        ("    base: org/small\n", "", "experts[0] (id 'small').base: required field is missing"),
        (
            "kind: embedded,",
            "kind: embeded,",
            "experts[0] (id 'small').backend: Input tag 'embeded' found using 'kind'",
        ),
        ("params_b: 0.135", "params_b: tiny", "experts[0] (id 'small').params_b: Input should be a valid number"),
        (
            "model: openai/gpt-x,",
            "modle: openai/gpt-x,",
            "experts[1] (id 'api').backend.modle: unknown key 'modle'; allowed keys: kind, model",
        ),
    ],
    ids=["typo-key", "missing-field", "unknown-backend-kind", "wrong-type", "typo-in-backend"],
)
def test_each_broken_file_fails_with_one_message_naming_file_and_field(
    database_url: str, tmp_path: Path, old: str, new: str, expected: str
) -> None:
    path = write(tmp_path, GOOD.replace(old, new, 1))
    store = Store(database_url)
    with pytest.raises(RegistryError) as caught:
        store.import_experts(load_registry_file(path), source=str(path))
    message = str(caught.value)
    assert message.startswith(str(path))
    assert expected in message
    assert store.list_experts() == []


def test_unknown_backend_kind_lists_the_allowed_kinds(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="'embedded', 'litellm', 'vllm', 'replay'"):
        load_registry_file(write(tmp_path, GOOD.replace("kind: litellm", "kind: openai")))


def test_missing_file_and_bad_yaml_are_registry_errors(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="no such registry file"):
        load_registry_file(tmp_path / "nope.yaml")
    with pytest.raises(RegistryError, match="not valid YAML"):
        load_registry_file(write(tmp_path, "experts: [\n"))


def test_adapter_on_an_unknown_base_names_the_known_experts(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="adapter base 'smal' is not an expert of this registry; known: api, small"):
        load_registry_file(write(tmp_path, GOOD.replace("base: small\n", "base: smal\n")))


def test_a_literal_api_key_warns_and_only_its_mask_is_dumped(tmp_path: Path) -> None:
    literal = GOOD.replace("api_key_env: GPT_X_KEY", "api_key: sk-test-0123456789abc")
    with pytest.warns(LiteralSecretWarning, match=r"expert 'api' has a literal api_key.*\(sk-…abc\).*api_key_env"):
        experts = load_registry_file(write(tmp_path, literal))
    dumped = dump_registry(experts)
    assert "0123456789" not in dumped and "api_key: sk-…abc" in dumped
    assert "0123456789" not in repr(experts) and "0123456789" not in experts[1].model_dump_json()


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("api_key_env: GPT_X_KEY, api_key: sk-x", "give `api_key_env` (the variable holding the key) or `api_key`"),
        ("api_key_env: GPT-X-KEY", "api_key_env: String should match pattern"),
    ],
    ids=["both", "not-a-variable-name"],
)
def test_api_key_sources_are_validated(tmp_path: Path, key: str, expected: str) -> None:
    with pytest.raises(RegistryError, match=re.escape(expected)):
        load_registry_file(write(tmp_path, GOOD.replace("api_key_env: GPT_X_KEY", key)))


def test_duplicate_ids_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="appears twice"):
        load_registry_file(write(tmp_path, GOOD.replace("id: api", "id: small")))


def test_round_trip_import_list_export_import(database_url: str, tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    experts = load_registry_file(path)
    store = Store(database_url)
    first = store.import_experts(experts, source=str(path))
    assert first.added == ("small", "api", "small-law")
    assert [s.spec for s in store.list_experts()] == sorted(experts, key=lambda e: e.id)

    exported = write(tmp_path, dump_registry(s.spec for s in store.list_experts()), "exported.yaml")
    again = load_registry_file(exported)
    assert sorted(again, key=lambda e: e.id) == sorted(experts, key=lambda e: e.id)

    second = store.import_experts(again, source=str(path))
    assert second.added == () and second.updated == ()
    assert set(second.unchanged) == {"small", "api", "small-law"}


def test_reimport_of_a_changed_expert_updates_it(database_url: str, tmp_path: Path) -> None:
    store = Store(database_url)
    path = write(tmp_path, GOOD)
    store.import_experts(load_registry_file(path), source=str(path))
    changed = load_registry_file(write(tmp_path, GOOD.replace("cost_per_mtok: 2.5", "cost_per_mtok: 3.0")))
    summary = store.import_experts(changed, source=str(path))
    assert summary.updated == ("api",)
    assert store.get_expert("api").spec.cost_per_mtok == 3.0


def test_remove_refuses_a_base_with_adapters_then_removes(database_url: str, tmp_path: Path) -> None:
    store = Store(database_url)
    path = write(tmp_path, GOOD)
    store.import_experts(load_registry_file(path), source=str(path))
    with pytest.raises(RegistryError, match="base of adapter"):
        store.remove_expert("small")
    store.remove_expert("small-law")
    store.remove_expert("small")
    assert [s.spec.id for s in store.list_experts()] == ["api"]
    with pytest.raises(UnknownExpertError, match=r"unknown expert 'small'.*known: api"):
        store.get_expert("small")


def test_registry_lookup_of_unknown_id_names_known_ids(tmp_path: Path) -> None:
    registry = Registry.from_file(write(tmp_path, GOOD))
    with pytest.raises(UnknownExpertError, match=r"unknown expert 'big'.*known: api, small, small-law"):
        registry["big"]
    assert list(registry.subset(["small-law"])) == ["small-law", "small"]


VLLM_8192 = "{kind: vllm, model: /models/m, max_model_len: 8192}"


def test_an_expert_context_is_its_only_context_setting(tmp_path: Path) -> None:
    """The registry's `context` is what the backend runs with: an adapter inherits its base's (it runs
    on the base's server), may not differ from it, and the backends have no second setting."""
    based = GOOD.replace("    params_b: 0.135", "    params_b: 0.135\n    context: 2048")
    by_id = {e.id: e for e in load_registry_file(write(tmp_path, based))}
    assert by_id["small-law"].context == by_id["small"].context == 2048
    assert by_id["small-law"].load_key == by_id["small"].load_key
    with pytest.raises(RegistryError, match=r"'small-law'.*context 1024.*base 'small' runs with 2048"):
        load_registry_file(write(tmp_path, based + "    context: 1024\n"))
    embedded = "{kind: embedded, weights: smollm2-135m-instruct-q4_1}"
    for name, backend in (("n_ctx", embedded.replace("}", ", n_ctx: 8192}")), ("max_model_len", VLLM_8192)):
        with pytest.raises(RegistryError, match=f"{name}.*set the expert's `context`"):
            load_registry_file(write(tmp_path, GOOD.replace(embedded, backend)))


def test_the_shipped_pools_validate() -> None:
    repo = Path(__file__).resolve().parents[1]
    for path in sorted((repo / "registry").glob("*.yaml")):
        assert len(load_registry_file(path, repo.parent / "shared" / "data")) >= 2, path
