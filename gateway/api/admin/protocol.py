"""Pydantic schemas of the admin API (``/admin``): request bodies with limits, and responses.

Responses are built from the lifecycle's plain dataclasses (:class:`gateway.lifecycle.service.
AdapterView`) by :func:`adapter_out`. Used by :mod:`gateway.api.admin.adapters` and, on the
client side, read as JSON by ``lora-gateway adapters``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from adapters.db import NAME_LENGTH, PATH_LENGTH
from adapters.sampling import SamplingDefaultsError, validate_sampling_defaults
from adapters.sources import MAX_SOURCE_LENGTH
from adapters.state import AdapterState
from gateway.lifecycle.fetching import Fetch, FetchState
from gateway.lifecycle.types import AdapterView, VersionView

MAX_VERSION = 1_000_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RegisterAdapterRequest(_Strict):
    name: str = Field(
        min_length=1,
        max_length=NAME_LENGTH,
        description="Public model id clients use; letters, digits, '.', '_', '-'.",
    )
    path: str | None = Field(
        default=None,
        min_length=1,
        max_length=PATH_LENGTH,
        description="Absolute path of the PEFT directory, under an allowed root.",
    )
    source: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_SOURCE_LENGTH,
        description="Where to fetch it from: s3://BUCKET/PREFIX, hf://ORG/NAME[@REV], or a "
        "local path. A remote source is fetched in the background (state 'fetching').",
    )
    pinned: bool | None = Field(default=None, description="Keep loaded; never evicted.")
    load: bool = Field(default=False, description="Load now instead of on first request.")
    new_version: bool = Field(
        default=False, description="Same name, different content: register version N+1."
    )

    @model_validator(mode="after")
    def _one_origin(self) -> RegisterAdapterRequest:
        if (self.path is None) == (self.source is None):
            raise ValueError("give exactly one of 'path' (a local directory) and 'source' (a URL)")
        return self


class UpdateAdapterRequest(_Strict):
    """At least one field. ``sampling_defaults`` replaces the active version's defaults
    (:mod:`adapters.sampling`); ``null`` clears them."""

    pinned: bool | None = Field(default=None, description="Keep loaded; never evicted.")
    sampling_defaults: dict[str, Any] | None = Field(
        default=None,
        description="temperature, top_p, top_k, min_p, max_tokens, stop, penalties; null clears.",
    )

    @field_validator("sampling_defaults")
    @classmethod
    def _checked(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        try:
            return validate_sampling_defaults(value) or None
        except SamplingDefaultsError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _not_empty(self) -> UpdateAdapterRequest:
        if not self.model_fields_set:
            raise ValueError("nothing to change: give pinned and/or sampling_defaults")
        if "pinned" in self.model_fields_set and self.pinned is None:
            raise ValueError("pinned must be true or false")
        return self


class RestoreAdapterRequest(_Strict):
    version: int = Field(ge=1, le=MAX_VERSION)


class AdapterVersionOut(BaseModel):
    version: int
    active: bool
    state: AdapterState
    upstream_name: str
    base_model: str
    source_path: str
    rank: int
    alpha: float
    target_modules: list[str] | str
    sha256: str
    size_bytes: int
    sampling_defaults: dict[str, Any] | None
    in_flight: int
    engines: list[str]
    last_error: str | None
    created_at: datetime
    updated_at: datetime


class FetchErrorOut(BaseModel):
    message: str
    code: str | int | None


class AdapterFetchOut(BaseModel):
    """An adapter being fetched from a remote source, or whose fetch failed."""

    object: Literal["adapter.fetch"] = "adapter.fetch"
    name: str
    source: str
    state: FetchState
    bytes_done: int
    bytes_total: int | None
    error: FetchErrorOut | None
    started_at: datetime
    finished_at: datetime | None


class AdapterOut(BaseModel):
    object: Literal["adapter"] = "adapter"
    name: str
    pinned: bool
    active_version: int
    state: AdapterState
    upstream_name: str
    #: The active version's (client-sent parameters always win over them).
    sampling_defaults: dict[str, Any] | None
    in_flight: int
    engines: list[str]
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    #: Every version, oldest first (only in the single-adapter responses).
    versions: list[AdapterVersionOut] | None = None
    #: A new version being fetched (or whose fetch failed), if any.
    fetch: AdapterFetchOut | None = None


class AdapterListOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[AdapterOut]
    #: Adapters with no registered version yet: fetching, or their fetch failed.
    fetching: list[AdapterFetchOut] = Field(default_factory=list)


class AdapterDeletedOut(BaseModel):
    object: Literal["adapter.deleted"] = "adapter.deleted"
    name: str
    deleted: bool = True


def _version_out(view: VersionView, active: int) -> AdapterVersionOut:
    version = view.version
    return AdapterVersionOut(
        version=version.version,
        active=version.version == active,
        state=view.state,
        upstream_name=version.upstream_name,
        base_model=version.base_model,
        source_path=version.source_path,
        rank=version.rank,
        alpha=version.alpha,
        target_modules=(
            version.target_modules
            if isinstance(version.target_modules, str)
            else list(version.target_modules)
        ),
        sha256=version.sha256,
        size_bytes=version.size_bytes,
        sampling_defaults=version.sampling_defaults,
        in_flight=view.leases,
        engines=list(view.engines),
        last_error=view.last_error,
        created_at=version.created_at,
        updated_at=version.updated_at,
    )


def fetch_out(fetch: Fetch) -> AdapterFetchOut:
    error = fetch.error
    return AdapterFetchOut(
        name=fetch.name,
        source=fetch.source,
        state=fetch.state,
        bytes_done=fetch.bytes_done,
        bytes_total=fetch.bytes_total,
        error=FetchErrorOut(message=error.message, code=error.code) if error is not None else None,
        started_at=fetch.started_at,
        finished_at=fetch.finished_at,
    )


def adapter_out(
    view: AdapterView, *, with_versions: bool = True, fetch: Fetch | None = None
) -> AdapterOut:
    record, active = view.record, view.active
    return AdapterOut(
        name=record.name,
        pinned=record.pinned,
        active_version=record.active_version,
        state=active.state,
        upstream_name=active.version.upstream_name,
        sampling_defaults=active.version.sampling_defaults,
        in_flight=sum(v.leases for v in view.versions),
        engines=list(active.engines),
        last_error=active.last_error,
        created_at=record.created_at,
        updated_at=record.updated_at,
        versions=(
            [_version_out(v, record.active_version) for v in view.versions]
            if with_versions
            else None
        ),
        fetch=fetch_out(fetch) if fetch is not None else None,
    )


class EngineStatusOut(BaseModel):
    name: str
    state: str
    #: Why it is in that state: pid, seconds, the exit code or error, log path (admin only).
    reason: str
    restarts: int
    url: str
    base_model: str
    pid: int | None
    log_path: str | None
    #: Adapters loaded on it now, of how many it can hold (vLLM's --max-cpu-loras).
    slots_used: int
    slots_total: int


class AdapterStatusOut(BaseModel):
    name: str
    version: int
    state: AdapterState
    pinned: bool
    engines: list[str]
    in_flight: int
    last_error: str | None


class ReplicaStatusOut(BaseModel):
    """A gateway replica on the shared placement board."""

    id: str
    #: The replica that answered.
    this: bool
    live: bool
    heartbeat_age_s: float
    #: Adapter versions on engines it has requests in flight on.
    holds: int


class GatewayStatusOut(BaseModel):
    object: Literal["gateway.status"] = "gateway.status"
    ready: bool
    #: OpenAI requests being served now (the gauge lora_gateway_in_flight_requests).
    in_flight: int
    engines: list[EngineStatusOut]
    adapters: list[AdapterStatusOut]
    #: Gateway replicas sharing the engines (null: this one alone, no shared board).
    replicas: list[ReplicaStatusOut] | None = None
