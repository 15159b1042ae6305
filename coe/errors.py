"""Every error coe raises, in one hierarchy, so callers catch `CoeError` and read one clear line.

    CoeError
    ├── ConfigError
    │   ├── RegistryError            a registry file or database entry is invalid
    │   └── SkillTaxonomyError       a skills/*.yaml file is invalid
    ├── QueryError (ValueError)      a question cannot be asked as given (e.g. > 10 choices)
    ├── UnknownExpertError (KeyError)
    ├── UnknownNameError (KeyError)  an unknown router, aggregator, benchmark, ...
    ├── NotFittedError (ValueError)  a router used before `fit`
    ├── BackendError                 carries `expert`, `retryable`, the original as __cause__
    │   ├── BackendUnavailableError  an optional dependency or weights package is missing
    │   └── GenerationError          the model or API failed on a request
    ├── SchedulerError
    ├── DatasetError                 a benchmark file is missing, unreadable or locked
    ├── ProfileError                 a stored profile is unknown or does not fit the pool
    ├── RunError                     an evaluation run cannot start or resume
    └── StoreError                   the database stayed locked by another writer

Messages name the thing, the bad value, the allowed values and the next step.
"""

from __future__ import annotations

from collections.abc import Iterable

from coe.types import Failure, FailureKind


class CoeError(Exception):
    """Root of every coe error."""


class ConfigError(CoeError):
    """Configuration (settings, registry, taxonomy) is invalid."""


class RegistryError(ConfigError):
    """A registry file or stored expert is invalid; the message names file and field."""


class SkillTaxonomyError(ConfigError):
    """A skill taxonomy file is invalid."""


class QueryError(CoeError, ValueError):
    """A query cannot be asked as given."""


class _NamedKeyError(CoeError, KeyError):
    # KeyError.__str__ wraps the message in quotes; show it as written.
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnknownExpertError(_NamedKeyError):
    """An expert id that no registry holds."""

    def __init__(self, expert: str, known: Iterable[str], where: str = "the registry") -> None:
        self.expert = expert
        known_list = sorted(known)
        super().__init__(
            f"unknown expert {expert!r} in {where}; known: {', '.join(known_list) or '(none)'}; see `coe registry list`"
        )


class UnknownNameError(_NamedKeyError):
    """A name looked up in a fixed table (router, aggregator, benchmark, weights package)."""

    def __init__(self, what: str, name: str, known: Iterable[str]) -> None:
        self.name = name
        super().__init__(f"unknown {what} {name!r}; known: {', '.join(sorted(known))}")


class NotFittedError(CoeError, ValueError):
    """A router was used before `fit`."""

    def __init__(self, router: str) -> None:
        super().__init__(
            f"router {router!r} is not fitted; call `fit(outcomes)` with profiling outcomes before `route`"
        )


class BackendError(CoeError):
    """A backend failed; `kind` says how, `retryable` whether trying again may help."""

    default_kind: FailureKind = "error"

    def __init__(
        self, message: str, *, expert: str | None = None, retryable: bool = False, kind: FailureKind | None = None
    ) -> None:
        self.expert = expert
        self.retryable = retryable
        self.kind: FailureKind = kind or self.default_kind
        prefix = f"expert {expert!r}: " if expert else ""
        super().__init__(prefix + message)

    def failure(self) -> Failure:
        """This error as a request's typed failure (what the scheduler returns instead of raising)."""
        return Failure(str(self), kind=self.kind, retryable=self.retryable, expert=self.expert)


class BackendUnavailableError(BackendError):
    """An optional dependency, a weights package or a model file is missing."""

    default_kind = "unavailable"


class GenerationError(BackendError):
    """A model or API call failed."""


class SchedulerError(CoeError):
    """The scheduler was given requests it cannot run."""


class DatasetError(CoeError):
    """A benchmark dataset is missing, unreadable or locked."""


class ProfileError(CoeError):
    """A stored profile is unknown, or measured other experts than the pool holds."""


class RunError(CoeError):
    """An evaluation run cannot start or resume as asked."""


class StoreError(CoeError):
    """The database could not take a write: another writer held its lock past the timeout, twice."""


class LiteralSecretWarning(UserWarning):
    """A registry file holds a literal API key (stored masked; give `api_key_env` instead)."""
