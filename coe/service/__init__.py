"""`coe serve`: an OpenAI-compatible HTTP service over the Composer (FastAPI, run by uvicorn).

`create_app` is imported on first use, so that the CLI can read this package's settings (`config`)
without importing the web framework."""

from typing import TYPE_CHECKING, Any

from coe.service.config import ServiceConfig

if TYPE_CHECKING:
    from coe.service.app import create_app

__all__ = ["ServiceConfig", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from coe.service.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
