"""vLLM's ``POST /tokenize`` and ``POST /detokenize``, routed by ``model`` like completions.

An adapter may bring its own tokenizer, so the request goes to an engine that holds the adapter
(the lease is held while it runs) under the engine's name for it. ``model`` is optional, as in
vLLM: without it, the base model. The answers hold no model name and no usage. Included by
:func:`gateway.api.openai.routes.build_openai_router`.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from gateway.api.caller_route import CallerRoute
from gateway.api.deps import CallerDep
from gateway.api.openai.admission import admit_and_forward, read_body
from gateway.api.openai.protocol import DetokenizeRequest, TokenizeRequest
from gateway.inference.proxy import ProxyCall

TOKENIZE = "/tokenize"
DETOKENIZE = "/detokenize"


def build_tokenize_router() -> APIRouter:
    router = APIRouter(tags=["vllm"], route_class=CallerRoute)

    @router.post(TOKENIZE)
    async def tokenize(caller: CallerDep) -> Response:
        raw, body = await read_body(caller, TokenizeRequest)
        model = body.model or caller.services.router.base_model
        return await admit_and_forward(caller, ProxyCall(TOKENIZE, model, False, raw))

    @router.post(DETOKENIZE)
    async def detokenize(caller: CallerDep) -> Response:
        raw, body = await read_body(caller, DetokenizeRequest)
        model = body.model or caller.services.router.base_model
        return await admit_and_forward(caller, ProxyCall(DETOKENIZE, model, False, raw))

    return router
