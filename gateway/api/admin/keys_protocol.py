"""Pydantic schemas of ``/admin/keys``: strict request bodies with limits on every field, and
the key as the API shows it (never its secret, except once in :class:`IssuedKeyOut`).

Used by :mod:`gateway.api.admin.keys` and read as JSON by ``lora-gateway keys``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from gateway.auth.key_store import KEY_NAME_LENGTH
from gateway.auth.keys import ALL_MODELS, IssuedKey, KeyLimits, VirtualKey

MAX_MODEL_PATTERNS = 100
MAX_RPM = 10_000_000
MAX_TOKENS = 10**15
MAX_CONCURRENT = 100_000

KeyName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=KEY_NAME_LENGTH,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Letters, digits, '.', '_', '-'.",
    ),
]
ModelPattern = Annotated[
    str,
    Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9._\-*?\[\]!/:@]+$",
        description="A model id or a glob over ids (legal-*, *): adapters and the base model.",
    ),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LimitsIn(_Strict):
    """Each limit is optional; null (or absent at creation) means none of that kind."""

    rpm: int | None = Field(default=None, ge=1, le=MAX_RPM, description="Requests per minute.")
    tpm: int | None = Field(default=None, ge=1, le=MAX_TOKENS, description="Tokens per minute.")
    max_concurrent: int | None = Field(default=None, ge=1, le=MAX_CONCURRENT)
    daily_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS, description="Per UTC day.")
    monthly_tokens: int | None = Field(
        default=None, ge=1, le=MAX_TOKENS, description="Per UTC calendar month."
    )

    def merged_into(self, current: KeyLimits) -> KeyLimits:
        """``current`` with the fields this body set (null clears one)."""
        values = {
            "rpm": current.rpm,
            "tpm": current.tpm,
            "max_concurrent": current.max_concurrent,
            "daily_tokens": current.daily_tokens,
            "monthly_tokens": current.monthly_tokens,
        }
        for name in self.model_fields_set:
            values[name] = getattr(self, name)
        return KeyLimits(**values)


class CreateKeyRequest(_Strict):
    name: KeyName
    models: list[ModelPattern] = Field(
        default_factory=lambda: list(ALL_MODELS), min_length=1, max_length=MAX_MODEL_PATTERNS
    )
    limits: LimitsIn = Field(default_factory=LimitsIn)
    expires_at: AwareDatetime | None = Field(default=None, description="ISO 8601 with a zone.")


class UpdateKeyRequest(_Strict):
    """Only the fields sent change; ``expires_at: null`` removes the expiry."""

    name: KeyName | None = None
    models: list[ModelPattern] | None = Field(
        default=None, min_length=1, max_length=MAX_MODEL_PATTERNS
    )
    limits: LimitsIn | None = None
    expires_at: AwareDatetime | None = None


class LimitsOut(BaseModel):
    rpm: int | None
    tpm: int | None
    max_concurrent: int | None
    daily_tokens: int | None
    monthly_tokens: int | None


class KeyOut(BaseModel):
    id: str
    name: str
    prefix: str
    status: Literal["active", "expired", "revoked"]
    models: list[str]
    limits: LimitsOut
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    rotated_at: datetime | None


class IssuedKeyOut(KeyOut):
    secret: str = Field(description="Shown this once: the gateway keeps only its hash.")


class KeyListOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[KeyOut]


def key_out(key: VirtualKey) -> KeyOut:
    status: Literal["active", "expired", "revoked"]
    if key.revoked_at is not None:
        status = "revoked"
    elif not key.usable_at(datetime.now(UTC)):
        status = "expired"
    else:
        status = "active"
    limits = key.limits
    return KeyOut(
        id=key.id,
        name=key.name,
        prefix=key.prefix,
        status=status,
        models=list(key.models),
        limits=LimitsOut(
            rpm=limits.rpm,
            tpm=limits.tpm,
            max_concurrent=limits.max_concurrent,
            daily_tokens=limits.daily_tokens,
            monthly_tokens=limits.monthly_tokens,
        ),
        created_at=key.created_at,
        updated_at=key.updated_at,
        expires_at=key.expires_at,
        revoked_at=key.revoked_at,
        rotated_at=key.rotated_at,
    )


def issued_key_out(issued: IssuedKey) -> IssuedKeyOut:
    return IssuedKeyOut(**key_out(issued.key).model_dump(), secret=issued.secret)


class AdapterLimitsIn(_Strict):
    """An adapter's own limits; each null or absent means none of that kind (all none: removed)."""

    rpm: int | None = Field(default=None, ge=1, le=MAX_RPM, description="Requests per minute.")
    tpm: int | None = Field(default=None, ge=1, le=MAX_TOKENS, description="Tokens per minute.")
    max_concurrent: int | None = Field(default=None, ge=1, le=MAX_CONCURRENT)

    def to_limits(self) -> KeyLimits:
        return KeyLimits(rpm=self.rpm, tpm=self.tpm, max_concurrent=self.max_concurrent)


class AdapterLimitsOut(BaseModel):
    model: str
    rpm: int | None
    tpm: int | None
    max_concurrent: int | None


def adapter_limits_out(model: str, limits: KeyLimits) -> AdapterLimitsOut:
    return AdapterLimitsOut(
        model=model, rpm=limits.rpm, tpm=limits.tpm, max_concurrent=limits.max_concurrent
    )
