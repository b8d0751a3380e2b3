"""``GET /admin/usage``: token usage per hour, key and model, as JSON or CSV.

Behind the admin token (:func:`gateway.api.admin.adapters.require_admin`); included by
:func:`gateway.app.create_app`. Reads :class:`gateway.auth.usage_records.UsageStore` after
flushing this replica's unsaved sums.

    GET /admin/usage?key=&adapter=&from=&to=&format=json|csv

``key`` is a key's id or name (or ``static``, ``open``); ``adapter`` a registered adapter name;
``from`` and ``to`` ISO 8601 times with a zone (rows whose hour starts in [from, to)).
"""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import AwareDatetime, BaseModel
from starlette.responses import Response

from adapters.db import NAME_LENGTH
from gateway.api.admin.adapters import require_admin
from gateway.api.deps import TenantsDep
from gateway.auth.key_store import KEY_NAME_LENGTH
from gateway.auth.tenants import Tenants
from gateway.auth.usage_records import NO_KEY, STATIC_KEY
from gateway.errors import InvalidRequestError

CSV_COLUMNS = (
    "hour",
    "key_id",
    "key_name",
    "model",
    "adapter",
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
)


class UsageLineOut(BaseModel):
    hour: datetime
    key_id: str
    key_name: str | None
    model: str
    adapter: str | None
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class UsageOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[UsageLineOut]


async def _key_id(tenants: Tenants, ref: str | None) -> str | None:
    if ref is None or ref in (STATIC_KEY, NO_KEY):
        return ref
    return (await asyncio.to_thread(tenants.store.get, ref)).id  # 404 when unknown


def build_usage_router() -> APIRouter:
    router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])

    @router.get("/usage", response_model=None)
    async def usage(
        tenants: TenantsDep,
        key: Annotated[str | None, Query(min_length=1, max_length=KEY_NAME_LENGTH)] = None,
        adapter: Annotated[str | None, Query(min_length=1, max_length=NAME_LENGTH)] = None,
        since: Annotated[AwareDatetime | None, Query(alias="from")] = None,
        until: Annotated[AwareDatetime | None, Query(alias="to")] = None,
        format: Literal["json", "csv"] = "json",
    ) -> UsageOut | Response:
        if since is not None and until is not None and since >= until:
            raise InvalidRequestError(
                f"from ({since.isoformat()}) must be before to ({until.isoformat()})",
                param="from",
            )
        key_id = await _key_id(tenants, key)
        recorder = tenants.usage
        lines = []
        if recorder is not None:
            await recorder.flush()
            lines = await asyncio.to_thread(
                lambda: recorder.store.query(
                    key_id=key_id, adapter=adapter, since=since, until=until
                )
            )
        names = {k.id: k.name for k in await asyncio.to_thread(tenants.store.list)}
        out = [
            UsageLineOut(
                hour=line.hour,
                key_id=line.key_id,
                key_name=names.get(line.key_id),
                model=line.model,
                adapter=line.adapter,
                requests=line.requests,
                prompt_tokens=line.prompt_tokens,
                completion_tokens=line.completion_tokens,
                total_tokens=line.prompt_tokens + line.completion_tokens,
            )
            for line in lines
        ]
        if format == "json":
            return UsageOut(data=out)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(CSV_COLUMNS)
        for row in out:
            values = row.model_dump()
            values["hour"] = row.hour.isoformat()
            writer.writerow(["" if values[c] is None else values[c] for c in CSV_COLUMNS])
        return Response(
            buffer.getvalue(),
            media_type="text/csv",
            headers={"content-disposition": 'attachment; filename="usage.csv"'},
        )

    return router
