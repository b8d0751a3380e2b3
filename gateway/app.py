"""``create_app(settings)``: the gateway's FastAPI application, built fresh for each caller.

Called by ``lora-gateway serve`` (:mod:`gateway.commands.serve`) and by tests; there is no
module-level app. The app's lifespan builds one :class:`~gateway.api.deps.Services`:

* engines: passed in (shared with the caller, who starts and stops them; tests share one vLLM
  per session) or, when ``engines`` is None, built by
  :func:`gateway.engines.factory.build_engines` and then owned: started on startup, stopped on
  shutdown;
* the adapter resolver, made in ONE place (:func:`open_adapter_resolver`) unless passed in;
* the :class:`~gateway.routing.Router` and :class:`~gateway.proxy.OpenAIProxy` over them.

Around every request sits :class:`~gateway.api.middleware.RequestContextMiddleware` (request id,
body limit, last-resort 500, access log, observer); every error renders in the OpenAI shape
(:mod:`gateway.api.error_handlers`). ``/v1/*`` requires an API key when keys are configured.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from gateway.api.deps import Services
from gateway.api.error_handlers import install_error_handlers
from gateway.api.health import build_health_router
from gateway.api.middleware import RequestContextMiddleware
from gateway.api.openai_routes import build_openai_router
from gateway.auth import ApiKeyAuth
from gateway.engines.base import Engine
from gateway.proxy import OpenAIProxy
from gateway.request_log import AccessLog, NullObserver, RequestObserver
from gateway.routing import AdapterResolver, NoAdapters, Router
from gateway.settings import GatewaySettings

logger = logging.getLogger(__name__)


@asynccontextmanager
async def open_adapter_resolver(
    settings: GatewaySettings, engines: list[Engine]
) -> AsyncIterator[AdapterResolver]:
    """The app's adapter resolver, for as long as the app runs.

    The seam for the adapter lifecycle (registry + loading on engines). Until it is wired in,
    the app knows no adapters: every model name but the base model's is a 404.
    """
    yield NoAdapters()


def build_observer(settings: GatewaySettings) -> RequestObserver:
    """The request observer (metrics hook point); a no-op until metrics are wired in."""
    return NullObserver()


def _build_engines(settings: GatewaySettings) -> list[Engine]:
    from gateway.engines.factory import build_engines

    return build_engines(settings)


def create_app(
    settings: GatewaySettings,
    *,
    engines: list[Engine] | None = None,
    adapter_resolver: AdapterResolver | None = None,
) -> FastAPI:
    observer = build_observer(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owns_engines = engines is None
        active = _build_engines(settings) if engines is None else list(engines)
        started: list[Engine] = []
        try:
            if owns_engines:
                for engine in active:
                    await engine.start()
                    started.append(engine)
            async with _resolver(active) as adapters:
                router = Router(active, adapters)
                app.state.services = Services(
                    settings=settings,
                    engines=active,
                    router=router,
                    adapters=adapters,
                    proxy=OpenAIProxy(router, observer),
                    observer=observer,
                    owns_engines=owns_engines,
                )
                yield
        finally:
            for engine in reversed(started):
                try:
                    await engine.stop()
                finally:
                    await engine.close_client()

    @asynccontextmanager
    async def _resolver(active: list[Engine]) -> AsyncIterator[AdapterResolver]:
        if adapter_resolver is not None:
            yield adapter_resolver
        else:
            async with open_adapter_resolver(settings, active) as resolver:
                yield resolver

    app = FastAPI(
        title="lora-gateway",
        summary="OpenAI-compatible multi-LoRA gateway in front of vLLM.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=settings.max_body_bytes,
        access_log=AccessLog(json_lines=settings.log_json),
        observer=observer,
    )
    app.include_router(build_health_router())
    v1_dependencies = [Depends(ApiKeyAuth(settings.api_keys))] if settings.api_keys else []
    app.include_router(build_openai_router(), dependencies=v1_dependencies)
    return app
