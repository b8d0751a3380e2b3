"""``create_app(settings)``: the gateway's FastAPI application, built fresh for each caller.

Called by ``lora-gateway serve`` (:mod:`gateway.commands.serve`) and by tests; there is no
module-level app. What it wires together:

* metrics: one :class:`~gateway.observability.metrics.GatewayMetrics` per app, fed by the request
  middleware through :class:`~gateway.observability.request_metrics.RequestMetricsObserver`, by the
  adapter lifecycle (``metrics.adapter_events``) and, at scrape time, by the engines' per-adapter
  activity (:class:`~gateway.observability.engine_activity.EngineAdapterActivity`); served at ``GET
  /metrics``;
* the admin API (``/admin``, its own bearer token from :func:`gateway.auth.admin_token.
  load_admin_token`, generated into the data dir on first start), never behind the ``/v1``
  API keys;
* the lifespan, which builds one :class:`~gateway.api.deps.Services`:

  - engines: passed in (shared with the caller, who starts and stops them; tests share one
    vLLM per session) or, when ``engines`` is None, built by
    :func:`gateway.engines.factory.build_engines` and then owned: started on startup,
    stopped on shutdown, after the adapter lifecycle closed;
  - the adapter lifecycle (:class:`~gateway.lifecycle.service.AdapterLifecycle` over the
    registry, which also scans ``--adapters-dir``), opened by :func:`open_adapter_resolver`
    unless one is passed in (then the caller built it with the same factory,
    :func:`gateway.lifecycle.startup.build_lifecycle`, and owns it, like passed-in engines).
    It is the router's only adapter resolver and serves the admin API (``app.state.lifecycle``);
    there is no other resolver, so tests run the production request path;
  - the :class:`~gateway.inference.routing.Router` and :class:`~gateway.inference.proxy.OpenAIProxy`
    over them.

Around every request sits :class:`~gateway.api.middleware.RequestContextMiddleware` (request id,
body limit, last-resort 500, access log, observer); every error renders in the OpenAI shape
(:mod:`gateway.api.error_handlers`). ``/v1/*`` requires an API key when keys are configured.

Shutdown order (uvicorn, on SIGTERM): stop accepting, let in-flight requests finish within
``settings.drain_timeout_s`` (``timeout_graceful_shutdown``), then this lifespan's exit: the
lifecycle closes, then owned engines stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from gateway.api.admin.adapters import build_admin_router
from gateway.api.admin.aliases import build_aliases_router
from gateway.api.admin.keys import build_keys_router
from gateway.api.admin.status import build_status_router
from gateway.api.admin.usage import build_usage_router
from gateway.api.anthropic.messages import build_messages_router
from gateway.api.deps import Services, get_principal
from gateway.api.error_handlers import install_error_handlers
from gateway.api.health import build_health_router
from gateway.api.metrics import build_metrics_router
from gateway.api.middleware import RequestContextMiddleware
from gateway.api.openai.routes import build_openai_router
from gateway.auth.adapter_limits import AdapterLimitStore
from gateway.auth.admin_token import load_admin_token
from gateway.auth.key_store import KeyStore
from gateway.auth.limits import KeyLimiter, open_storage
from gateway.auth.tenants import Tenants
from gateway.auth.usage_records import UsageRecorder, UsageStore
from gateway.engines.base import Engine
from gateway.engines.basemodels import base_sampling_defaults
from gateway.inference.aliases import AliasBook, AliasMetrics
from gateway.inference.proxy import OpenAIProxy
from gateway.inference.routing import Router
from gateway.lifecycle.service import AdapterLifecycle
from gateway.lifecycle.types import LifecycleObserver
from gateway.observability.access_log import AccessLog
from gateway.observability.engine_activity import EngineAdapterActivity, versioned_public_name
from gateway.observability.key_tokens import KeyTokenMetrics
from gateway.observability.metrics import GatewayMetrics
from gateway.observability.request_metrics import RequestMetricsObserver
from gateway.settings import GatewaySettings

logger = logging.getLogger(__name__)


@asynccontextmanager
async def open_adapter_resolver(
    settings: GatewaySettings,
    engines: list[Engine],
    *,
    observer: LifecycleObserver | None = None,
) -> AsyncIterator[AdapterLifecycle]:
    """The app's adapter lifecycle, for as long as the app runs: THE one place it is opened.

    The :class:`~gateway.lifecycle.service.AdapterLifecycle` over the registry in the data dir (or
    ``settings.database_url``); it re-applies the registry's desired state on every ready
    engine and registers what ``settings.adapters_dir`` holds.
    """
    from gateway.lifecycle.startup import open_lifecycle

    async with open_lifecycle(settings, engines, observer=observer) as lifecycle:
        yield lifecycle


def _build_engines(settings: GatewaySettings) -> list[Engine]:
    from gateway.engines.factory import build_engines

    return build_engines(settings)


def create_app(
    settings: GatewaySettings,
    *,
    engines: list[Engine] | None = None,
    lifecycle: AdapterLifecycle | None = None,
) -> FastAPI:
    metrics = GatewayMetrics()
    observer = RequestMetricsObserver(metrics)
    # Upstream LoRA names (NAME@vN.tag) map back to registered names, read at each scrape.
    activity = EngineAdapterActivity(
        [],
        versioned_public_name(lambda: metrics.registered_adapters()),
        registry=metrics.registry,
    )
    metrics.add_scrape_hook(activity.refresh)
    alias_metrics = AliasMetrics(metrics.registry)
    key_tokens = KeyTokenMetrics(metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owns_engines = engines is None
        active = _build_engines(settings) if engines is None else list(engines)
        started: list[Engine] = []
        key_store = await asyncio.to_thread(KeyStore.open, settings.resolved_database_url)
        usage = UsageRecorder(await asyncio.to_thread(UsageStore, key_store.engine))
        usage_writer = asyncio.create_task(usage.run(settings.usage_flush_interval_s))
        tenants = Tenants(
            key_store,
            KeyLimiter(open_storage(settings.redis_url)),
            settings.api_keys,
            usage=usage,
            adapter_limits=await asyncio.to_thread(AdapterLimitStore, key_store.engine),
            tokens=key_tokens,
            cache_ttl_s=settings.key_cache_ttl_s,
        )
        try:
            if owns_engines:
                for engine in active:
                    await engine.start()
                    started.append(engine)
            metrics.bind_engines(active)
            activity.bind_engines(active)
            async with _lifecycle(active) as adapters:
                metrics.bind_adapters(
                    registered=adapters.registered_names,
                    loaded=adapters.loaded_per_engine,
                    placement=adapters.placement_stats.items,
                )
                app.state.lifecycle = adapters
                aliases = AliasBook(
                    adapters.registry,
                    base_model=active[0].base_model,
                    rollback_window=settings.alias_rollback_window,
                    rollback_threshold=settings.alias_rollback_threshold,
                    metrics=alias_metrics,
                )
                await aliases.refresh()
                follower = asyncio.create_task(aliases.follow(settings.alias_refresh_interval_s))
                router = Router(
                    active,
                    adapters,
                    load=adapters.engine_load,
                    stats=adapters.placement_stats,
                    base_sampling_defaults=base_sampling_defaults(
                        settings.base_model, settings.models_dir, settings.served_model_name
                    ),
                    aliases=aliases,
                )
                app.state.services = Services(
                    settings=settings,
                    engines=active,
                    router=router,
                    adapters=adapters,
                    proxy=OpenAIProxy(router, observer),
                    observer=observer,
                    owns_engines=owns_engines,
                    metrics=metrics,
                    tenants=tenants,
                )
                try:
                    yield
                finally:
                    follower.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await follower
        finally:
            usage_writer.cancel()
            try:
                await usage.flush()
            except Exception:
                logger.exception("could not write the last usage records")
            key_store.close()
            for engine in reversed(started):
                try:
                    await engine.stop()
                finally:
                    await engine.close_client()

    @asynccontextmanager
    async def _lifecycle(active: list[Engine]) -> AsyncIterator[AdapterLifecycle]:
        if lifecycle is not None:
            yield lifecycle
        else:
            async with open_adapter_resolver(
                settings, active, observer=metrics.adapter_events
            ) as resolver:
                yield resolver

    app = FastAPI(
        title="lora-gateway",
        summary="OpenAI-compatible multi-LoRA gateway in front of vLLM.",
        lifespan=lifespan,
        # "/v1/models/" is an unknown path (404 in the OpenAI shape), not a redirect elsewhere.
        redirect_slashes=False,
    )
    # The first start writes DATA_DIR/admin_token (0600); `serve` prints where it is.
    app.state.admin_token = load_admin_token(settings)
    app.state.metrics = metrics
    install_error_handlers(app)
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=settings.max_body_bytes,
        access_log=AccessLog(),
        observer=observer,
    )
    # Every /v1 route, present and future, authenticates (a no-op on an open gateway). Their
    # routers come first: a request is matched against the routes in order, and these are hot.
    app.include_router(build_openai_router(), dependencies=[Depends(get_principal)])
    app.include_router(build_messages_router(), dependencies=[Depends(get_principal)])
    app.include_router(build_health_router())
    app.include_router(build_metrics_router(metrics))
    app.include_router(build_admin_router())
    app.include_router(build_aliases_router())
    app.include_router(build_status_router())
    app.include_router(build_keys_router())
    app.include_router(build_usage_router())
    return app
