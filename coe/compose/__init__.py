"""One public way to build a composition: a declarative `CompositionSpec` and `compose()`.

A spec names the pool (a registry file, an imported pool or a bundled one), the router and its
hyperparameters, where its profile comes from (a stored profile, a benchmark split to profile now,
K labelled examples of the user's task to run every expert on, or the registry's declared priors),
the aggregator, k, the generation settings and the executor. `compose(spec)` returns a fitted,
ready `Composer`. The SDK, `coe ask/demo`, `coe eval` (one composition per router), `coe aggregators
probe`, the service and the UI all build compositions here; a `CompositionBuilder` shares what is
costly between them (database, backends, scheduler, encoder, skill annotators, loaded benchmarks).
"""

from coe.compose.builder import CompositionBuilder, ProgressFactory, compose
from coe.compose.spec import (
    AggregatorSpec,
    CompositionSpec,
    GenerationSpec,
    KShotProfile,
    ProfileSource,
    RouterSpec,
    SplitProfile,
    StoredProfile,
    parse_profile_source,
)

__all__ = [
    "AggregatorSpec",
    "CompositionBuilder",
    "CompositionSpec",
    "GenerationSpec",
    "KShotProfile",
    "ProfileSource",
    "ProgressFactory",
    "RouterSpec",
    "SplitProfile",
    "StoredProfile",
    "compose",
    "parse_profile_source",
]
