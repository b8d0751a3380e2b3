"""vLLM's ``POST /tokenize`` and ``POST /detokenize``, routed by ``model`` like completions.

An adapter may bring its own tokenizer, so the request goes to an engine that holds the adapter
(the lease is held while it runs) under the engine's name for it. ``model`` is optional, as in
vLLM: without it, the base model. The answers hold no model name and no usage. Included by
:func:`gateway.api.openai.routes.build_openai_router`.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.api.deps import PrincipalDep, ProxyDep, RequestInfoDep, RouterDep, TenantsDep
from gateway.api.openai.admission import forward_admitted
from gateway.api.openai.body import parse_body
from gateway.api.openai.protocol import DetokenizeRequest, TokenizeRequest
from gateway.inference.proxy import ProxyCall

TOKENIZE = "/tokenize"
DETOKENIZE = "/detokenize"


def build_tokenize_router() -> APIRouter:
    router = APIRouter(tags=["vllm"])

    @router.post(TOKENIZE)
    async def tokenize(
        request: Request,
        proxy: ProxyDep,
        routing: RouterDep,
        info: RequestInfoDep,
        principal: PrincipalDep,
        tenants: TenantsDep,
    ) -> Response:
        raw = await request.body()
        body = parse_body(TokenizeRequest, raw)
        model = body.model or routing.base_model
        admission = await tenants.admit(principal, model)
        call = ProxyCall(TOKENIZE, model, False, raw)
        return await forward_admitted(admission, info, proxy.forward(call, info, request.receive))

    @router.post(DETOKENIZE)
    async def detokenize(
        request: Request,
        proxy: ProxyDep,
        routing: RouterDep,
        info: RequestInfoDep,
        principal: PrincipalDep,
        tenants: TenantsDep,
    ) -> Response:
        raw = await request.body()
        body = parse_body(DetokenizeRequest, raw)
        model = body.model or routing.base_model
        admission = await tenants.admit(principal, model)
        call = ProxyCall(DETOKENIZE, model, False, raw)
        return await forward_admitted(admission, info, proxy.forward(call, info, request.receive))

    return router
