"""Virtual client keys: what one is, how its secret is made and recognised, what it may reach.

Plain data and pure functions, no I/O. The secret (``lgw-`` + 43 url-safe characters, 256 bits
from :mod:`secrets`) is shown once, when the key is created or rotated; only its sha256 is
stored (:mod:`gateway.auth.key_store`), with a short visible prefix for humans. A plain hash
and not a slow password hash: the secret is random and high-entropy, so a fast hash is safe and
the hot path pays about a microsecond. Used by the key store, the authenticator
(:mod:`gateway.auth.tenants`), the limiter (:mod:`gateway.auth.limits`) and the admin API.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from fnmatch import fnmatchcase

SECRET_PREFIX = "lgw-"
#: Characters of the secret kept in clear to tell keys apart (``lgw-`` and 8 more).
VISIBLE_PREFIX_CHARS = len(SECRET_PREFIX) + 8
#: Every model: the default scope of a new key.
ALL_MODELS = ("*",)


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """Per-key limits; None means no limit of that kind."""

    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    daily_tokens: int | None = None
    monthly_tokens: int | None = None

    @property
    def any(self) -> bool:
        return any(
            value is not None
            for value in (
                self.rpm,
                self.tpm,
                self.max_concurrent,
                self.daily_tokens,
                self.monthly_tokens,
            )
        )


@dataclass(frozen=True, slots=True)
class VirtualKey:
    """One key as stored, without its secret."""

    id: str
    name: str
    prefix: str
    models: tuple[str, ...]
    limits: KeyLimits
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    rotated_at: datetime | None = None
    secret_hash: str = field(default="", repr=False)

    def usable_at(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def may_use(self, model: str) -> bool:
        return models_allow(self.models, model)


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A key with its secret: only ever returned by create and rotate."""

    key: VirtualKey
    secret: str


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def visible_prefix(secret: str) -> str:
    return secret[:VISIBLE_PREFIX_CHARS]


def models_allow(patterns: Sequence[str], model: str) -> bool:
    """True when ``model`` matches one of the glob ``patterns`` (case-sensitive, like ids)."""
    return any(fnmatchcase(model, pattern) for pattern in patterns)


def unmatched_patterns(patterns: Iterable[str], models: Iterable[str]) -> list[str]:
    """The patterns that match none of ``models`` (a typo an operator should hear about)."""
    names = list(models)
    return [p for p in patterns if not any(fnmatchcase(name, p) for name in names)]
