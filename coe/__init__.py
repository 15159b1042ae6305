"""coe — Composition of Experts: route each query to the right LLM experts, run them
expert-batched (each model loaded once), and fuse their answers."""

from coe.aggregate import LlmSynthesis, MajorityVote, Verdict, WeightedVote, make_aggregator
from coe.backends import LitellmBackend, LlamaCppBackend
from coe.compose import CompositionBuilder, CompositionSpec, compose
from coe.composer import BatchResult, Composer
from coe.errors import (
    BackendError,
    BackendUnavailableError,
    CoeError,
    ConfigError,
    DatasetError,
    GenerationError,
    NotFittedError,
    QueryError,
    RegistryError,
    UnknownExpertError,
)
from coe.outcomes import Outcomes
from coe.recovery import Recovery
from coe.registry import Registry
from coe.routers import (
    ROUTERS,
    AllRouter,
    BestSingleRouter,
    ClassifierRouter,
    KnnRouter,
    OracleRouter,
    RandomRouter,
    Router,
    SkillRouter,
    make_router,
)
from coe.scheduler import Scheduler
from coe.schema import Answer, ExpertAnswer, ExpertChoice, ExpertSpec, Fallback, Query, Route
from coe.settings import Settings
from coe.types import Failure, GenerationParams

__all__ = [
    "ROUTERS",
    "AllRouter",
    "Answer",
    "BackendError",
    "BackendUnavailableError",
    "BatchResult",
    "BestSingleRouter",
    "ClassifierRouter",
    "CoeError",
    "Composer",
    "CompositionBuilder",
    "CompositionSpec",
    "ConfigError",
    "DatasetError",
    "ExpertAnswer",
    "ExpertChoice",
    "ExpertSpec",
    "Failure",
    "Fallback",
    "GenerationError",
    "GenerationParams",
    "KnnRouter",
    "LitellmBackend",
    "LlamaCppBackend",
    "LlmSynthesis",
    "MajorityVote",
    "NotFittedError",
    "OracleRouter",
    "Outcomes",
    "Query",
    "QueryError",
    "RandomRouter",
    "Recovery",
    "Registry",
    "RegistryError",
    "Route",
    "Router",
    "Scheduler",
    "Settings",
    "SkillRouter",
    "UnknownExpertError",
    "Verdict",
    "WeightedVote",
    "compose",
    "make_aggregator",
    "make_router",
]
