"""Skill taxonomies, the embedding annotator, keyword mapping, and the LLM annotator on a real model."""

from pathlib import Path

import pytest

from coe.backends.llamacpp import LlamaCppBackend
from coe.embed import Encoder
from coe.errors import SkillTaxonomyError
from coe.registry import Registry
from coe.resources import taxonomy_files
from coe.schema import Query
from coe.skills import (
    EmbeddingAnnotator,
    KeywordMapper,
    LlmAnnotator,
    bundled_taxonomy,
    load_taxonomy,
    parse_keywords,
)

QUERIES = [
    Query(id="q0", text="Solve for x: 3x + 5 = 20."),
    Query(id="q1", text="Which reagent converts an alcohol to an alkyl chloride via an SN2 mechanism?"),
    Query(id="q2", text="A seller accepted the buyer's offer by mail; when was the contract formed?"),
    Query(id="q3", text="Which enzyme unwinds the DNA double helix during replication?"),
]


def test_bundled_taxonomies_hold_the_benchmark_categories() -> None:
    mmlu = load_taxonomy(taxonomy_files()["mmlu_pro"])
    assert len(set(mmlu.categories)) == 14
    assert {"algebra", "organic chemistry", "contract law"} <= set(mmlu.skills)
    gpqa = load_taxonomy(taxonomy_files()["gpqa"])
    assert set(gpqa.categories) == {"Physics", "Chemistry", "Biology"}
    assert all(description for description in mmlu.descriptions + gpqa.descriptions)
    assert len(bundled_taxonomy().skills) == len(mmlu.skills) + len(gpqa.skills)


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ("benchmark: x\ncategories:\n  - name: math\n    description: d\n    skills:\n      - name: algebra\n"
         "        description: d\n        level: hard\n", "categories[0].skills[0].level"),
        ("benchmark: x\ncategories:\n  - name: math\n    description: d\n", "categories[0]"),
        ("benchmark: x\ncategories:\n  - name: math\n    description: d\n    skills:\n      - name: math\n"
         "        description: d\n", "appears twice"),
    ],
)  # fmt: skip
def test_an_invalid_taxonomy_names_file_and_field(tmp_path: Path, body: str, where: str) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(body)
    with pytest.raises(SkillTaxonomyError) as raised:
        load_taxonomy(path)
    assert "broken.yaml" in str(raised.value)
    assert where in str(raised.value)


def test_embedding_annotator_gives_two_to_five_fitting_skills(minilm: Encoder) -> None:
    annotated = EmbeddingAnnotator(bundled_taxonomy("mmlu_pro"), minilm).annotate(QUERIES)
    assert all(2 <= len(skills) <= 5 for skills in annotated)
    assert "algebra" in annotated[0]
    assert "organic chemistry" in annotated[1]
    assert "molecular and cell biology" in annotated[3]


def test_free_keywords_map_onto_their_nearest_skills(minilm: Encoder) -> None:
    mapper = KeywordMapper(bundled_taxonomy("mmlu_pro"), minilm)
    mapped = mapper.map([["contracts", "offer and acceptance"], ["derivatives", "integration"], []])
    assert mapped == [("contract law",), ("calculus",), ()]


def test_keywords_are_parsed_after_the_label_and_over_long_ones_dropped() -> None:
    text = "Sure! Keywords: Organic Chemistry, SN2 reactions, a very long keyword that rambles on, o, 42\nmore"
    assert parse_keywords(text, max_chars=20) == ["organic chemistry", "sn2 reactions"]
    assert parse_keywords("algebra, linear equations", max_chars=20) == ["algebra", "linear equations"]


@pytest.mark.slow
def test_llm_annotator_maps_recurring_keywords_onto_the_taxonomy(
    embedded_backend: LlamaCppBackend, embedded_pool: Registry, minilm: Encoder
) -> None:
    taxonomy = bundled_taxonomy("mmlu_pro")
    annotator = LlmAnnotator(embedded_backend, embedded_pool["smollm2-135m"], taxonomy, minilm, n_samples=2)
    annotated = annotator.annotate(QUERIES[:3])
    assert all(1 <= len(skills) <= 5 and set(skills) <= set(taxonomy.skills) for skills in annotated)
    assert annotator.annotate(QUERIES[:3]) == annotated  # seeded sampling: the same skills again
