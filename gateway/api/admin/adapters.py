"""The admin API under ``/admin``: thin routes over
:class:`gateway.lifecycle.service.AdapterLifecycle`.

Every route needs ``Authorization: Bearer <admin token>`` (401 when missing, 403 when wrong,
both in the OpenAI error shape). The app keeps the lifecycle on ``app.state.lifecycle`` and the
token (:class:`gateway.auth.admin_token.AdminToken`) on ``app.state.admin_token``;
:func:`build_admin_router` is included by :func:`gateway.app.create_app`.

    POST   /admin/adapters                   register {name, path | source, pinned?, load?,
                                             new_version?}; ?wait=true: wait for a fetch
    GET    /admin/adapters                   list (and the fetches of unregistered names)
    GET    /admin/adapters/{name}            one, with its versions (or its fetch)
    PATCH  /admin/adapters/{name}            {pinned?, sampling_defaults?} (null clears)
    POST   /admin/adapters/{name}/load       load now (retries a failed load)
    POST   /admin/adapters/{name}/unload     unload once in-flight requests drain
    POST   /admin/adapters/{name}/restore    {version}: make an earlier version active
    DELETE /admin/adapters/{name}            unload every version, then forget it
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from adapters.db import NAME_LENGTH
from gateway.api.admin.protocol import (
    AdapterDeletedOut,
    AdapterFetchOut,
    AdapterListOut,
    AdapterOut,
    RegisterAdapterRequest,
    RestoreAdapterRequest,
    UpdateAdapterRequest,
    adapter_out,
    fetch_out,
)
from gateway.auth.admin_token import AdminToken
from gateway.errors import AuthenticationError, GatewayError, PermissionDeniedError
from gateway.lifecycle.service import AdapterLifecycle

_BEARER = "bearer "


def get_lifecycle(request: Request) -> AdapterLifecycle:
    lifecycle = getattr(request.app.state, "lifecycle", None)
    if not isinstance(lifecycle, AdapterLifecycle):
        raise GatewayError(
            "the adapter registry is not running on this gateway", code="registry_unavailable"
        )
    return lifecycle


def require_admin(request: Request) -> None:
    token = getattr(request.app.state, "admin_token", None)
    if not isinstance(token, AdminToken):
        raise GatewayError("the admin token is not configured", code="admin_token_missing")
    header = request.headers.get("authorization", "")
    if not header.lower().startswith(_BEARER) or not header[len(_BEARER) :].strip():
        raise AuthenticationError(
            "the admin API needs 'Authorization: Bearer <admin token>' (LORA_GATEWAY_ADMIN_TOKEN"
            ", or the admin_token file in the gateway's data dir)",
            code="missing_admin_token",
        )
    if not token.verify(header[len(_BEARER) :].strip()):
        raise PermissionDeniedError("the admin token is not valid", code="invalid_admin_token")


LifecycleDep = Annotated[AdapterLifecycle, Depends(get_lifecycle)]
AdapterName = Annotated[str, Path(min_length=1, max_length=NAME_LENGTH)]


def build_admin_router() -> APIRouter:
    router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])

    @router.post("/adapters", status_code=201)
    async def register_adapter(
        body: RegisterAdapterRequest,
        lifecycle: LifecycleDep,
        response: Response,
        wait: Annotated[bool, Query(description="Wait (bounded) for a remote fetch.")] = False,
    ) -> AdapterOut | AdapterFetchOut:
        pinned, load, new_version = body.pinned, body.load, body.new_version
        if body.source is None or not lifecycle.fetcher.is_remote(body.source):
            path = body.path or (body.source or "").removeprefix("file://")
            view, created = await lifecycle.register(
                body.name, path, pinned=pinned, load=load, new_version=new_version
            )
        else:
            fetch = lifecycle.fetch(
                body.name, body.source, pinned=pinned, load=load, new_version=new_version
            )
            if not wait or not await lifecycle.fetcher.wait(fetch):
                response.status_code = 202
                return fetch_out(fetch)
            view, created = fetch.result
        response.status_code = 201 if created else 200
        return adapter_out(view)

    @router.get("/adapters")
    async def list_adapters(lifecycle: LifecycleDep) -> AdapterListOut:
        fetcher = lifecycle.fetcher
        return AdapterListOut(
            data=[
                adapter_out(v, with_versions=False, fetch=fetcher.get(v.record.name))
                for v in lifecycle.views()
            ],
            fetching=[
                fetch_out(f) for f in fetcher.list() if f.name not in lifecycle.registered_names()
            ],
        )

    @router.get("/adapters/{name}")
    async def get_adapter(
        name: AdapterName, lifecycle: LifecycleDep
    ) -> AdapterOut | AdapterFetchOut:
        fetch = lifecycle.fetcher.get(name)
        if fetch is not None and name not in lifecycle.registered_names():
            return fetch_out(fetch)
        return adapter_out(lifecycle.view(name), fetch=fetch)

    @router.patch("/adapters/{name}")
    async def update_adapter(
        name: AdapterName, body: UpdateAdapterRequest, lifecycle: LifecycleDep
    ) -> AdapterOut:
        if "sampling_defaults" in body.model_fields_set:
            await lifecycle.set_sampling_defaults(name, body.sampling_defaults)
        if body.pinned is not None:
            await lifecycle.set_pinned(name, body.pinned)
        return adapter_out(lifecycle.view(name))

    @router.post("/adapters/{name}/load")
    async def load_adapter(name: AdapterName, lifecycle: LifecycleDep) -> AdapterOut:
        return adapter_out(await lifecycle.load(name))

    @router.post("/adapters/{name}/unload")
    async def unload_adapter(name: AdapterName, lifecycle: LifecycleDep) -> AdapterOut:
        return adapter_out(await lifecycle.unload(name))

    @router.post("/adapters/{name}/restore")
    async def restore_adapter(
        name: AdapterName, body: RestoreAdapterRequest, lifecycle: LifecycleDep
    ) -> AdapterOut:
        return adapter_out(await lifecycle.restore(name, body.version))

    @router.delete("/adapters/{name}")
    async def delete_adapter(name: AdapterName, lifecycle: LifecycleDep) -> AdapterDeletedOut:
        await lifecycle.delete(name)
        return AdapterDeletedOut(name=name)

    return router
