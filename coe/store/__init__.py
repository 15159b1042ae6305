"""Persistence with SQLAlchemy 2 (the only package that imports it)."""

from coe.store.database import ImportSummary, Store, StoredExpert, StoredPool
from coe.store.keys import ApiKey, KeyStore, hash_key
from coe.store.profiles import (
    AggregatorChoice,
    ProfileItem,
    ProfileOutcome,
    ProfileRecord,
    ProfileStore,
    latest_aggregator_choice,
    save_aggregator_choice,
)
from coe.store.runs import ItemTrace, ResultRow, RunRecord, RunStore, trace_item
from coe.store.traffic import RequestLog, ServedRequest

__all__ = [
    "AggregatorChoice",
    "ApiKey",
    "ImportSummary",
    "ItemTrace",
    "KeyStore",
    "ProfileItem",
    "ProfileOutcome",
    "ProfileRecord",
    "ProfileStore",
    "RequestLog",
    "ResultRow",
    "RunRecord",
    "RunStore",
    "ServedRequest",
    "Store",
    "StoredExpert",
    "StoredPool",
    "hash_key",
    "latest_aggregator_choice",
    "save_aggregator_choice",
    "trace_item",
]
