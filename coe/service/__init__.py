"""`coe serve`: an OpenAI-compatible HTTP service over the Composer (FastAPI, run by uvicorn)."""

from coe.service.app import create_app
from coe.service.config import ServiceConfig

__all__ = ["ServiceConfig", "create_app"]
