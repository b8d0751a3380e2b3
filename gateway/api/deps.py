"""What routes can ask for: the app's :class:`Services` and typed ``Annotated`` aliases.

:func:`gateway.app.create_app` builds one :class:`Services` in its lifespan and keeps it on
``app.state.services``; routes declare what they need with the aliases below (``RouterDep``,
``ProxyDep``, ...) so each signature says what it uses.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from gateway.auth.tenants import Principal, Tenants
from gateway.engines.base import Engine
from gateway.inference.proxy import OpenAIProxy
from gateway.inference.record import RequestInfo, RequestObserver, request_info_of
from gateway.inference.routing import AdapterResolver, Router
from gateway.observability.metrics import GatewayMetrics
from gateway.settings import GatewaySettings


@dataclass(slots=True)
class Services:
    """Everything the routes use, built once per app start."""

    settings: GatewaySettings
    engines: list[Engine]
    router: Router
    adapters: AdapterResolver
    proxy: OpenAIProxy
    #: Metrics hook point (the metrics module provides the real one).
    observer: RequestObserver
    #: True when the app built the engines and so starts and stops them.
    owns_engines: bool
    metrics: GatewayMetrics
    #: Client keys, their scopes and limits.
    tenants: Tenants


def services_of(request: Request) -> Services:
    services = getattr(request.app.state, "services", None)
    if not isinstance(services, Services):
        raise RuntimeError("the app has not started: no services (was its lifespan run?)")
    return services


# The providers are ``async def`` on purpose: FastAPI runs plain ``def`` dependencies in a
# thread pool, which costs more than everything else on the request path.
async def get_services(request: Request) -> Services:
    return services_of(request)


async def get_router(request: Request) -> Router:
    return services_of(request).router


async def get_proxy(request: Request) -> OpenAIProxy:
    return services_of(request).proxy


async def get_tenants(request: Request) -> Tenants:
    return services_of(request).tenants


async def get_principal(request: Request) -> Principal:
    """Who calls: a 401 unless the key is known, usable (or static), or the gateway is open.

    Kept on the request's state too, so that an error answer gets the caller's limit headers
    (:func:`limit_headers_for`)."""
    authorization = request.headers.get("authorization")
    if authorization is None and (key := request.headers.get("x-api-key")) is not None:
        authorization = f"Bearer {key}"  # Anthropic's SDK sends its key this way
    principal = await services_of(request).tenants.authenticate(authorization)
    request.state.principal = principal
    return principal


async def limit_headers_for(request: Request, present: Collection[str] = ()) -> dict[str, str]:
    """The authenticated caller's x-ratelimit-* headers as they stand (nothing counted), unless
    ``present`` has them; {} before authentication, for an unlimited caller, or without an app."""
    principal = getattr(request.state, "principal", None)
    services = getattr(request.app.state, "services", None)
    if not isinstance(principal, Principal) or not isinstance(services, Services):
        return {}
    return await services.tenants.limit_headers(principal, present)


async def get_request_info(request: Request) -> RequestInfo:
    info = request_info_of(request.scope)
    if info is None:
        raise RuntimeError("no request record: RequestContextMiddleware is not installed")
    return info


@dataclass(frozen=True, slots=True)
class Caller:
    """One authenticated ``/v1`` request, with everything the admit-and-forward path uses
    (:mod:`gateway.api.openai.admission`): one dependency instead of five."""

    request: Request
    services: Services
    principal: Principal
    info: RequestInfo


async def get_caller(request: Request, principal: PrincipalDep) -> Caller:
    return Caller(request, services_of(request), principal, await get_request_info(request))


ServicesDep = Annotated[Services, Depends(get_services)]
RouterDep = Annotated[Router, Depends(get_router)]
ProxyDep = Annotated[OpenAIProxy, Depends(get_proxy)]
TenantsDep = Annotated[Tenants, Depends(get_tenants)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]
RequestInfoDep = Annotated[RequestInfo, Depends(get_request_info)]
CallerDep = Annotated[Caller, Depends(get_caller)]
