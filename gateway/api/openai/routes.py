"""The OpenAI-compatible routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, and the
router that gathers every endpoint family (models in :mod:`gateway.api.openai.models`).

Thin: read the body, validate it against :mod:`gateway.api.openai.protocol` (one parse, in
pydantic's JSON mode), hand the client's own bytes to :class:`gateway.inference.proxy.OpenAIProxy`,
which routes, forwards and renders. :func:`build_openai_router` is included by
:func:`gateway.app.create_app`, behind the API-key dependency when keys are configured.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.api.deps import PrincipalDep, ProxyDep, RequestInfoDep, TenantsDep
from gateway.api.openai.admission import forward_admitted
from gateway.api.openai.body import parse_body
from gateway.api.openai.models import build_models_router
from gateway.api.openai.protocol import ChatCompletionRequest, CompletionRequest
from gateway.api.openai.responses import build_responses_router
from gateway.api.openai.tokenize import build_tokenize_router
from gateway.inference.proxy import ProxyCall
from gateway.inference.sampling import CHAT_DEFAULTS, COMPLETION_DEFAULTS

CHAT_COMPLETIONS = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def build_openai_router() -> APIRouter:
    router = APIRouter(tags=["openai"])
    router.include_router(build_models_router())
    router.include_router(build_tokenize_router())
    router.include_router(build_responses_router())

    @router.post(CHAT_COMPLETIONS)
    async def chat_completions(
        request: Request,
        proxy: ProxyDep,
        info: RequestInfoDep,
        principal: PrincipalDep,
        tenants: TenantsDep,
    ) -> Response:
        raw = await request.body()
        body = parse_body(ChatCompletionRequest, raw)
        admission = await tenants.admit(principal, body.model)
        call = ProxyCall(
            CHAT_COMPLETIONS,
            body.model,
            body.stream,
            raw,
            client_asked_usage=body.asks_for_usage,
            defaults=CHAT_DEFAULTS,
            sent=body.sent_keys,
        )
        return await forward_admitted(admission, info, proxy.forward(call, info, request.receive))

    @router.post(COMPLETIONS)
    async def completions(
        request: Request,
        proxy: ProxyDep,
        info: RequestInfoDep,
        principal: PrincipalDep,
        tenants: TenantsDep,
    ) -> Response:
        raw = await request.body()
        body = parse_body(CompletionRequest, raw)
        admission = await tenants.admit(principal, body.model)
        call = ProxyCall(
            COMPLETIONS,
            body.model,
            body.stream,
            raw,
            client_asked_usage=body.asks_for_usage,
            defaults=COMPLETION_DEFAULTS,
            sent=body.sent_keys,
        )
        return await forward_admitted(admission, info, proxy.forward(call, info, request.receive))

    return router
