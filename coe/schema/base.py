"""The base of every boundary type: frozen, and unknown keys refused, so a typo in a file is an error
naming the field."""

from pydantic import BaseModel, ConfigDict


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
