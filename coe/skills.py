"""Skills: the taxonomy (`skills/*.yaml`), the skill keywords of a query, and their mapping onto it.

Two annotators share one batch-first protocol, `annotate(queries) -> list[tuple[str, ...]]`, each
returning 2–5 taxonomy skill names per query: `EmbeddingAnnotator` needs no LLM (nearest skills by
sentence similarity); `LlmAnnotator` asks any registry expert for the knowledge a question needs,
Symbolic-MoE style, and maps its free keywords onto the taxonomy by nearest embedding.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import yaml
from pydantic import ValidationError

from coe.backends import Backend
from coe.embed import Encoder
from coe.errors import SkillTaxonomyError
from coe.registry import describe_validation_error
from coe.resources import taxonomy_files
from coe.schema import ExpertSpec, Query, SkillGroup, SkillTaxonomyFile
from coe.types import GenerationParams, Prompt

KEYWORD_PROMPT = (
    "Question: {question}\n"
    "What are the core knowledge, subjects or skills needed to solve this problem? "
    "List 2-5 keywords separated by commas, for example: algebra, organic chemistry, contract law, "
    "macroeconomics, genetics. Give ONLY the keywords, no other words. Format: Keywords: <k1>, <k2>, ..."
)


@dataclass(frozen=True)
class SkillTaxonomy:
    """Leaf skills in file order, with their descriptions and top-level category."""

    benchmark: str
    skills: tuple[str, ...]
    descriptions: tuple[str, ...]
    categories: tuple[str, ...]

    @property
    def texts(self) -> list[str]:
        """What the encoder sees for each skill."""
        return [f"{name}: {text}" for name, text in zip(self.skills, self.descriptions, strict=True)]

    def merge(self, other: SkillTaxonomy) -> SkillTaxonomy:
        return SkillTaxonomy(
            f"{self.benchmark}+{other.benchmark}",
            self.skills + other.skills,
            self.descriptions + other.descriptions,
            self.categories + other.categories,
        )


def load_taxonomy(path: Path) -> SkillTaxonomy:
    """Read and validate one taxonomy file; errors name the file and the field."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise SkillTaxonomyError(f"cannot read skill taxonomy {path}: {error}") from error
    try:
        parsed = SkillTaxonomyFile.model_validate(raw)
    except ValidationError as error:
        raise SkillTaxonomyError(describe_validation_error(path, error, raw, SkillTaxonomyFile)) from error
    skills: list[tuple[str, str, str]] = []
    for category in parsed.categories:
        skills.extend((name, text, category.name) for name, text in _leaves(category))
    names, texts, categories = zip(*skills, strict=True)
    return SkillTaxonomy(parsed.benchmark, names, texts, categories)


def bundled_taxonomy(*names: str) -> SkillTaxonomy:
    """The taxonomies shipped in `skills/` (default: all of them), merged."""
    shipped = taxonomy_files()
    unknown = [name for name in names if name not in shipped]
    if unknown:
        raise SkillTaxonomyError(f"no bundled skill taxonomy {unknown[0]!r}; bundled: {', '.join(shipped)}")
    paths = [shipped[name] for name in names] or list(shipped.values())
    taxonomies = [load_taxonomy(path) for path in paths]
    merged = taxonomies[0]
    for taxonomy in taxonomies[1:]:
        merged = merged.merge(taxonomy)
    return merged


def _leaves(group: SkillGroup) -> list[tuple[str, str]]:
    found = [(skill.name, skill.description) for skill in group.skills]
    for child in group.groups:
        found.extend(_leaves(child))
    return found


class SkillAnnotator(Protocol):
    """Gives each query 2–5 skill names from a taxonomy; one call per batch."""

    def annotate(self, queries: Sequence[Query]) -> list[tuple[str, ...]]: ...


class _TaxonomyIndex:
    """The taxonomy's skills embedded once, for nearest-skill look-ups."""

    def __init__(self, taxonomy: SkillTaxonomy, encoder: Encoder) -> None:
        self.taxonomy = taxonomy
        self.encoder = encoder
        self._vectors: np.ndarray | None = None

    def similarities(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), n_skills) cosine similarities."""
        if not texts:
            return np.zeros((0, len(self.taxonomy.skills)), dtype=np.float32)
        if self._vectors is None:
            self._vectors = self.encoder.encode(self.taxonomy.texts)
        return self.encoder.encode(texts) @ self._vectors.T


class EmbeddingAnnotator:
    """No LLM: the skills whose descriptions are nearest the question. Always `min_keywords`, then
    more (up to `max_keywords`) while within `margin` of the best similarity."""

    def __init__(
        self,
        taxonomy: SkillTaxonomy,
        encoder: Encoder,
        *,
        min_keywords: int = 2,
        max_keywords: int = 5,
        margin: float = 0.05,
    ) -> None:
        self.index = _TaxonomyIndex(taxonomy, encoder)
        self.min_keywords = min_keywords
        self.max_keywords = max_keywords
        self.margin = margin

    def annotate(self, queries: Sequence[Query]) -> list[tuple[str, ...]]:
        similarities = self.index.similarities([query.text for query in queries])
        names = self.index.taxonomy.skills
        annotated = []
        for row in similarities:
            order = np.argsort(-row, kind="stable")[: self.max_keywords]
            keep = [
                i for rank, i in enumerate(order) if rank < self.min_keywords or row[i] >= row[order[0]] - self.margin
            ]
            annotated.append(tuple(names[i] for i in keep))
        return annotated


class KeywordMapper:
    """Free keywords onto the taxonomy: each to its nearest skill, duplicates dropped, order kept."""

    def __init__(self, taxonomy: SkillTaxonomy, encoder: Encoder) -> None:
        self.index = _TaxonomyIndex(taxonomy, encoder)

    def map(self, keyword_lists: Sequence[Sequence[str]]) -> list[tuple[str, ...]]:
        flat = list(dict.fromkeys(keyword for keywords in keyword_lists for keyword in keywords))
        nearest = np.argmax(self.index.similarities(flat), axis=1) if flat else np.zeros(0, dtype=int)
        skill_of = {keyword: self.index.taxonomy.skills[i] for keyword, i in zip(flat, nearest, strict=True)}
        return [tuple(dict.fromkeys(skill_of[keyword] for keyword in keywords)) for keywords in keyword_lists]


class LlmAnnotator:
    """Symbolic-MoE's keyword annotation through any expert: sample `n_samples` times at
    `temperature` (seeds `seed`, `seed+1`, ...), keep keywords that recur in at least `min_count`
    samples and are at most `max_chars` long, map them onto the taxonomy, keep `max_keywords`.

    When fewer than two keywords recur, the most frequent ones fill up; when the model gives nothing
    usable, the embedding annotator answers, so every query gets skills."""

    def __init__(
        self,
        backend: Backend,
        expert: ExpertSpec,
        taxonomy: SkillTaxonomy,
        encoder: Encoder,
        *,
        n_samples: int = 5,
        temperature: float = 0.7,
        min_count: int = 2,
        max_chars: int = 20,
        max_keywords: int = 5,
        max_tokens: int = 48,
        seed: int = 0,
    ) -> None:
        self.backend = backend
        self.expert = expert
        self.mapper = KeywordMapper(taxonomy, encoder)
        self.fallback = EmbeddingAnnotator(taxonomy, encoder, max_keywords=max_keywords)
        self.n_samples = n_samples
        self.temperature = temperature
        self.min_count = min_count
        self.max_chars = max_chars
        self.max_keywords = max_keywords
        self.max_tokens = max_tokens
        self.seed = seed

    def keywords(self, queries: Sequence[Query]) -> list[list[str]]:
        """The free keywords kept per query, most frequent first (before mapping)."""
        prompts = [Prompt(text=KEYWORD_PROMPT.format(question=q.text), query_id=q.id) for q in queries]
        counts: list[Counter[str]] = [Counter() for _ in queries]
        for sample in range(self.n_samples):
            params = GenerationParams(max_tokens=self.max_tokens, temperature=self.temperature, seed=self.seed + sample)
            for count, generation in zip(counts, self.backend.generate(self.expert, prompts, params), strict=True):
                if generation.ok:
                    count.update(set(parse_keywords(generation.text, self.max_chars)))
        kept = []
        for count in counts:
            ranked = [keyword for keyword, _ in count.most_common()]
            recurring = [keyword for keyword in ranked if count[keyword] >= self.min_count]
            kept.append(recurring if len(recurring) >= 2 else ranked[:2])
        return kept

    def annotate(self, queries: Sequence[Query]) -> list[tuple[str, ...]]:
        mapped = self.mapper.map(self.keywords(queries))
        empty = [i for i, skills in enumerate(mapped) if not skills]
        fallback = self.fallback.annotate([queries[i] for i in empty]) if empty else []
        for i, skills in zip(empty, fallback, strict=True):
            mapped[i] = skills
        return [skills[: self.max_keywords] for skills in mapped]


def parse_keywords(text: str, max_chars: int) -> list[str]:
    """Comma-separated keywords after an optional `Keywords:` label, lower-cased; over-long ones and
    ones without two characters and a letter are dropped."""
    line = text.strip().split("\n")[0] if "keywords:" not in text.lower() else text.lower().split("keywords:", 1)[1]
    line = line.strip().split("\n")[0]
    keywords = [re.sub(r"[^a-z0-9 &'+-]", "", part.lower()).strip() for part in line.split(",")]
    return [k for k in keywords if 2 <= len(k) <= max_chars and any(c.isalpha() for c in k)]
