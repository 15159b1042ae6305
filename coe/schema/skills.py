"""A skill taxonomy file (`skills/*.yaml`): a benchmark's categories and their finer skills."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from coe.schema.base import Frozen

# --------------------------------------------------------------------------- skills


class Skill(Frozen):
    """One skill of a taxonomy; the description is what the embedding annotator matches against."""

    name: Annotated[str, Field(min_length=1, max_length=60)]
    description: Annotated[str, Field(min_length=1)]


class SkillGroup(Frozen):
    """A category of skills; groups nest where a benchmark has subdomains (GPQA)."""

    name: Annotated[str, Field(min_length=1, max_length=60)]
    description: Annotated[str, Field(min_length=1)]
    skills: tuple[Skill, ...] = ()
    groups: tuple[SkillGroup, ...] = ()

    @model_validator(mode="after")
    def _not_empty(self) -> SkillGroup:
        if not self.skills and not self.groups:
            raise ValueError(f"group {self.name!r} needs `skills` or `groups`")
        return self


class SkillTaxonomyFile(Frozen):
    """A `skills/*.yaml` file: a benchmark's categories and their finer skills."""

    benchmark: str
    description: str = ""
    categories: tuple[SkillGroup, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> SkillTaxonomyFile:
        seen: set[str] = set()
        pending = list(self.categories)
        while pending:
            group = pending.pop()
            pending.extend(group.groups)
            for name in (group.name, *(skill.name for skill in group.skills)):
                if name.lower() in seen:
                    raise ValueError(f"name {name!r} appears twice")
                seen.add(name.lower())
        return self
