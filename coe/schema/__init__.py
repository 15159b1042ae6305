"""Pydantic types at coe's boundaries, each file format or flow in a module of its own: registry files
(`registry.py`), skill taxonomy files (`skills.py`), queries, routes and answers (`queries.py`).

All are frozen and reject unknown keys, so a typo in `registry/*.yaml` is an error naming the field.
"""

from coe.schema.base import Frozen
from coe.schema.queries import Answer, ExpertAnswer, ExpertChoice, Fallback, Query, Route, valid_unicode
from coe.schema.registry import (
    EmbeddedBackendSpec,
    ExpertSpec,
    LitellmBackendSpec,
    RegistryFile,
    ReplayBackendSpec,
    ResourceSpec,
    VllmBackendSpec,
    is_masked,
    mask_secret,
)
from coe.schema.skills import Skill, SkillGroup, SkillTaxonomyFile

__all__ = [
    "Answer",
    "EmbeddedBackendSpec",
    "ExpertAnswer",
    "ExpertChoice",
    "ExpertSpec",
    "Fallback",
    "Frozen",
    "LitellmBackendSpec",
    "Query",
    "RegistryFile",
    "ReplayBackendSpec",
    "ResourceSpec",
    "Route",
    "Skill",
    "SkillGroup",
    "SkillTaxonomyFile",
    "VllmBackendSpec",
    "is_masked",
    "mask_secret",
    "valid_unicode",
]
