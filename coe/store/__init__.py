"""Persistence with SQLAlchemy 2 (the only package that imports it)."""

from coe.store.database import ImportSummary, Store, StoredExpert
from coe.store.profiles import ProfileItem, ProfileOutcome, ProfileRecord, ProfileStore
from coe.store.runs import ResultRow, RunRecord, RunStore

__all__ = [
    "ImportSummary",
    "ProfileItem",
    "ProfileOutcome",
    "ProfileRecord",
    "ProfileStore",
    "ResultRow",
    "RunRecord",
    "RunStore",
    "Store",
    "StoredExpert",
]
