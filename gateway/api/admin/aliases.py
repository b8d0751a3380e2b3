"""``/admin/aliases``: thin routes over :class:`gateway.inference.aliases.AliasBook`.

Behind the admin token like every ``/admin`` route; included by :func:`gateway.app.create_app`.

    PUT    /admin/aliases/{name}   {targets: [{adapter, version, weight}, ...]}: create or replace
    GET    /admin/aliases          list
    GET    /admin/aliases/{name}   one
    DELETE /admin/aliases/{name}   delete

Bodies are strict: an unknown field, a bad name, a negative weight, weights not summing to 100,
an unknown adapter or version, a name taken by an adapter or the base model: a 4xx naming it.
A change takes effect for the next request; requests in flight keep the version they got.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from adapters.contract import NAME_PATTERN
from adapters.db import NAME_LENGTH
from adapters.registry import AliasRecord, AliasTarget
from gateway.api.admin.adapters import require_admin
from gateway.api.deps import services_of
from gateway.errors import GatewayError, ModelNotFoundError
from gateway.inference.aliases import AliasBook

#: An alias splits over at most this many versions.
MAX_TARGETS = 16
MAX_VERSION = 1_000_000

AliasName = Annotated[
    str, Path(min_length=1, max_length=NAME_LENGTH, pattern=f"^{NAME_PATTERN.pattern}$")
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AliasTargetIn(_Strict):
    adapter: str = Field(min_length=1, max_length=NAME_LENGTH)
    version: int = Field(ge=1, le=MAX_VERSION)
    weight: int = Field(ge=0, le=100, description="Percent of the alias's requests.")


class PutAliasRequest(_Strict):
    targets: list[AliasTargetIn] = Field(min_length=1, max_length=MAX_TARGETS)


class AliasTargetOut(BaseModel):
    adapter: str
    version: int
    weight: int


class AliasOut(BaseModel):
    name: str
    targets: list[AliasTargetOut]
    created_at: datetime
    updated_at: datetime


class AliasListOut(BaseModel):
    data: list[AliasOut]


def alias_out(record: AliasRecord) -> AliasOut:
    return AliasOut(
        name=record.name,
        targets=[
            AliasTargetOut(adapter=t.adapter, version=t.version, weight=t.weight)
            for t in record.targets
        ],
        created_at=record.created_at,
        updated_at=record.updated_at,
    )


def get_aliases(request: Request) -> AliasBook:
    book = services_of(request).router.aliases
    if book is None:
        raise GatewayError("aliases are not available in this gateway", code="aliases_missing")
    return book


AliasesDep = Annotated[AliasBook, Depends(get_aliases)]


def _no_alias(name: str) -> ModelNotFoundError:
    return ModelNotFoundError(f"no alias named {name!r}", param="name")


def build_aliases_router() -> APIRouter:
    router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])

    @router.put("/aliases/{name}", response_model=AliasOut)
    async def put_alias(name: AliasName, body: PutAliasRequest, aliases: AliasesDep) -> AliasOut:
        targets = tuple(AliasTarget(t.adapter, t.version, t.weight) for t in body.targets)
        return alias_out(await aliases.put(name, targets))

    @router.get("/aliases", response_model=AliasListOut)
    async def list_aliases(aliases: AliasesDep) -> AliasListOut:
        return AliasListOut(data=[alias_out(r) for r in aliases.all()])

    @router.get("/aliases/{name}", response_model=AliasOut)
    async def show_alias(name: AliasName, aliases: AliasesDep) -> AliasOut:
        record = aliases.get(name)
        if record is None:
            raise _no_alias(name)
        return alias_out(record)

    @router.delete("/aliases/{name}")
    async def delete_alias(name: AliasName, aliases: AliasesDep) -> dict[str, object]:
        if not await aliases.delete(name):
            raise _no_alias(name)
        return {"name": name, "deleted": True}

    return router
