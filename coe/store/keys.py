"""API keys of the service: created once (the key is shown only then), listed, revoked; stored hashed.

A key is 32 random bytes, so a plain SHA-256 is enough to store it safely (no password stretching
needed) and lets the service look a key up by its hash.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from coe.errors import ConfigError
from coe.store.concurrency import count_changed, insert_or_ignore, retried
from coe.store.database import Store, now
from coe.store.tables import ApiKeyRow

KEY_PREFIX = "coe-"


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    prefix: str
    rate_limit_per_min: int | None
    created_at: datetime
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    @retried
    def create(self, name: str, rate_limit_per_min: int | None = None) -> str:
        """A new key named `name`; returns the key itself, which is not stored and cannot be shown again.
        Two processes creating the same name: one wins, the other is told the name exists."""
        if not name or len(name) > 200:
            raise ConfigError("a key needs a name of 1 to 200 characters")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        row = {
            "name": name,
            "key_hash": hash_key(key),
            "prefix": key[: len(KEY_PREFIX) + 4],
            "rate_limit_per_min": rate_limit_per_min,
            "created_at": now(),
        }
        with self.store.session() as session:
            if not count_changed(session, insert_or_ignore(session, ApiKeyRow).values(**row)):
                raise ConfigError(f"a key named {name!r} exists; revoke it or choose another name (`coe keys list`)")
        return key

    def all(self) -> list[ApiKey]:
        with self.store.session() as session:
            return [_key(row) for row in session.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at))]

    @retried
    def revoke(self, name: str) -> None:
        with self.store.session() as session:
            row = session.get(ApiKeyRow, name)
            if row is None:
                known = ", ".join(session.scalars(select(ApiKeyRow.name))) or "none"
                raise ConfigError(f"no key named {name!r}; known: {known}")
            if row.revoked_at is None:
                row.revoked_at = now()

    def by_hash(self) -> dict[str, ApiKey]:
        """Every key (revoked ones too) by the hash of its secret."""
        with self.store.session() as session:
            return {row.key_hash: _key(row) for row in session.scalars(select(ApiKeyRow))}


def _key(row: ApiKeyRow) -> ApiKey:
    return ApiKey(
        name=row.name,
        prefix=row.prefix,
        rate_limit_per_min=row.rate_limit_per_min,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )
