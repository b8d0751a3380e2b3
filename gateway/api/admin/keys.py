"""``/admin/keys``: thin routes over :class:`gateway.auth.key_store.KeyStore`.

Behind the admin token like every ``/admin`` route (:func:`gateway.api.admin.adapters.
require_admin`); included by :func:`gateway.app.create_app`. ``{key}`` is a key's id or name.

    POST   /admin/keys                 {name, models?, limits?, expires_at?}: the secret, once
    GET    /admin/keys                 list
    GET    /admin/keys/{key}           one
    PATCH  /admin/keys/{key}           {name?, models?, limits?, expires_at?}
    POST   /admin/keys/{key}/revoke    refused from now on (every replica within the cache TTL)
    POST   /admin/keys/{key}/rotate    a new secret for the same key: the secret, once
    GET    /admin/adapters/{name}/limits    an adapter's own limits, whoever calls it
    PUT    /admin/adapters/{name}/limits    {rpm?, tpm?, max_concurrent?}: replaces them

Model patterns are checked against the models the gateway serves now (the base and the
registered adapters): one that matches nothing is a 400 naming it, since it is most likely a typo.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path

from adapters.db import NAME_LENGTH
from gateway.api.admin.adapters import require_admin
from gateway.api.admin.keys_protocol import (
    AdapterLimitsIn,
    AdapterLimitsOut,
    CreateKeyRequest,
    IssuedKeyOut,
    KeyListOut,
    KeyOut,
    UpdateKeyRequest,
    adapter_limits_out,
    issued_key_out,
    key_out,
)
from gateway.api.deps import RouterDep, TenantsDep
from gateway.auth.adapter_limits import AdapterLimitStore
from gateway.auth.key_store import KEY_NAME_LENGTH
from gateway.auth.keys import KeyLimits, unmatched_patterns
from gateway.auth.tenants import Tenants
from gateway.errors import GatewayError, InvalidRequestError
from gateway.inference.routing import Router, unknown_model

KeyRef = Annotated[str, Path(min_length=1, max_length=KEY_NAME_LENGTH)]
ModelName = Annotated[str, Path(min_length=1, max_length=2 * NAME_LENGTH)]
MAX_NAMES_IN_ERROR = 20


def check_patterns(patterns: Sequence[str], router: Router) -> tuple[str, ...]:
    known = [model.id for model in router.public_models()]
    unmatched = unmatched_patterns(patterns, known)
    if unmatched:
        shown = ", ".join(known[:MAX_NAMES_IN_ERROR]) + (" ..." if len(known) > 20 else "")
        raise InvalidRequestError(
            f"models: {', '.join(repr(p) for p in unmatched)} match no model this gateway "
            f"serves ({shown}); register the adapter first or fix the pattern",
            param="models",
            code="unmatched_model_pattern",
        )
    return tuple(dict.fromkeys(patterns))


def check_expiry(expires_at: datetime | None) -> None:
    if expires_at is not None and expires_at <= datetime.now(UTC):
        raise InvalidRequestError(
            f"expires_at: {expires_at.isoformat()} is in the past; give a future time",
            param="expires_at",
        )


def build_keys_router() -> APIRouter:
    router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])

    @router.post("/keys", status_code=201)
    async def create_key(
        body: CreateKeyRequest, tenants: TenantsDep, routing: RouterDep
    ) -> IssuedKeyOut:
        models = check_patterns(body.models, routing)
        check_expiry(body.expires_at)
        limits = body.limits.merged_into(KeyLimits())
        issued = await asyncio.to_thread(
            tenants.store.create,
            body.name,
            models=models,
            limits=limits,
            expires_at=body.expires_at,
        )
        tenants.forget()
        return issued_key_out(issued)

    @router.get("/keys")
    async def list_keys(tenants: TenantsDep) -> KeyListOut:
        keys = await asyncio.to_thread(tenants.store.list)
        return KeyListOut(data=[key_out(key) for key in keys])

    @router.get("/keys/{key}")
    async def get_key(key: KeyRef, tenants: TenantsDep) -> KeyOut:
        return key_out(await asyncio.to_thread(tenants.store.get, key))

    @router.patch("/keys/{key}")
    async def update_key(
        key: KeyRef, body: UpdateKeyRequest, tenants: TenantsDep, routing: RouterDep
    ) -> KeyOut:
        models = None if body.models is None else check_patterns(body.models, routing)
        check_expiry(body.expires_at)
        limits = None
        if body.limits is not None:
            current = await asyncio.to_thread(tenants.store.get, key)
            limits = body.limits.merged_into(current.limits)
        updated = await asyncio.to_thread(
            lambda: tenants.store.update(
                key,
                name=body.name,
                models=models,
                limits=limits,
                expires_at=body.expires_at,
                clear_expiry="expires_at" in body.model_fields_set and body.expires_at is None,
            )
        )
        tenants.forget()
        return key_out(updated)

    @router.post("/keys/{key}/revoke")
    async def revoke_key(key: KeyRef, tenants: TenantsDep) -> KeyOut:
        revoked = await asyncio.to_thread(tenants.store.revoke, key)
        tenants.forget()
        return key_out(revoked)

    @router.post("/keys/{key}/rotate")
    async def rotate_key(key: KeyRef, tenants: TenantsDep) -> IssuedKeyOut:
        issued = await asyncio.to_thread(tenants.store.rotate, key)
        tenants.forget()
        return issued_key_out(issued)

    @router.get("/adapters/{name}/limits")
    async def get_adapter_limits(
        name: ModelName, tenants: TenantsDep, routing: RouterDep
    ) -> AdapterLimitsOut:
        store = _adapter_limit_store(tenants)
        _served(name, routing)
        limits = (await asyncio.to_thread(store.all)).get(name, KeyLimits())
        return adapter_limits_out(name, limits)

    @router.put("/adapters/{name}/limits")
    async def set_adapter_limits(
        name: ModelName, body: AdapterLimitsIn, tenants: TenantsDep, routing: RouterDep
    ) -> AdapterLimitsOut:
        store = _adapter_limit_store(tenants)
        _served(name, routing)
        limits = await asyncio.to_thread(store.set, name, body.to_limits())
        tenants.forget()
        return adapter_limits_out(name, limits)

    return router


def _adapter_limit_store(tenants: Tenants) -> AdapterLimitStore:
    if tenants.adapter_limits is None:
        raise GatewayError("adapter limits are not stored on this gateway", code="no_limit_store")
    return tenants.adapter_limits


def _served(name: str, router: Router) -> None:
    if name not in {model.id for model in router.public_models()}:
        raise unknown_model(name)
