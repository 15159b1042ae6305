"""Routers pick experts per query; every one follows the contract in `coe.routers.base`."""

from __future__ import annotations

from typing import Any

from coe.errors import UnknownNameError
from coe.routers.base import Router
from coe.routers.baselines import AllRouter, BestSingleRouter, OracleRouter, RandomRouter

ROUTERS: dict[str, type[Router]] = {cls.name: cls for cls in (BestSingleRouter, RandomRouter, AllRouter, OracleRouter)}


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
    "OracleRouter",
    "RandomRouter",
    "Router",
    "make_router",
]
