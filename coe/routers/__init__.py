"""Routers pick experts per query; every one follows the contract in `coe.routers.base`.

Collaborators are objects given to the constructor, never built from settings inside a router:
`encoder` (a `coe.embed` encoder, whose `cache_dir` keeps query embeddings on disk) for knn,
cluster, mf, skill and classifier, and `annotator` (a `coe.skills` annotator) for skill. Left as
None, a router builds a MiniLM encoder in `fit`, caching in memory only (the static encoder, the
default of compositions, would have to be distilled again without a cache dir). An evaluation builds one encoder
and one annotator and passes the same ones to every router, e.g.
`make_router(name, k=3, random_state=seed, encoder=encoder, annotator=annotator)`:
`make_router` keeps only the parameters each router takes.
"""

from __future__ import annotations

from typing import Any

from coe.errors import UnknownNameError
from coe.routers.base import Router
from coe.routers.baselines import AllRouter, BestSingleRouter, OracleRouter, RandomRouter
from coe.routers.classifier import ClassifierRouter
from coe.routers.cluster import ClusterRouter
from coe.routers.knn import KnnRouter
from coe.routers.kshot import KShotRouter
from coe.routers.mf import MfRouter
from coe.routers.skill import SkillRouter

ROUTERS: dict[str, type[Router]] = {
    cls.name: cls
    for cls in (
        BestSingleRouter,
        RandomRouter,
        AllRouter,
        OracleRouter,
        KnnRouter,
        SkillRouter,
        ClassifierRouter,
        ClusterRouter,
        MfRouter,
        KShotRouter,
    )
}


def make_router(name: str, **params: Any) -> Router:
    """A router by name, with only the hyperparameters its constructor takes."""
    cls = ROUTERS.get(name)
    if cls is None:
        raise UnknownNameError("router", name, ROUTERS)
    router = cls()
    return router.set_params(**{key: value for key, value in params.items() if key in router.get_params()})


__all__ = [
    "ROUTERS",
    "AllRouter",
    "BestSingleRouter",
    "ClassifierRouter",
    "ClusterRouter",
    "KShotRouter",
    "KnnRouter",
    "MfRouter",
    "OracleRouter",
    "RandomRouter",
    "Router",
    "SkillRouter",
    "make_router",
]
