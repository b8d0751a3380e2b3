"""The OpenAI-compatible routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, and the
router that gathers every endpoint family (models in :mod:`gateway.api.openai.models`).

Thin: read the body, validate it against :mod:`gateway.api.openai.protocol` (one parse, in
pydantic's JSON mode), build the call from the client's own bytes and hand it to the one
admit-and-forward path (:mod:`gateway.api.openai.admission`); the proxy
(:class:`gateway.inference.proxy.OpenAIProxy`) routes, forwards and renders.
:func:`build_openai_router` is included by :func:`gateway.app.create_app`, behind the API-key
dependency when keys are configured, and before every other router: routes are tried in order.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from gateway.api.caller_route import CallerRoute
from gateway.api.deps import CallerDep
from gateway.api.openai.admission import admit_and_forward, caller_affinity, read_body
from gateway.api.openai.models import build_models_router
from gateway.api.openai.protocol import ChatCompletionRequest, CompletionRequest
from gateway.api.openai.responses import build_responses_router
from gateway.api.openai.tokenize import build_tokenize_router
from gateway.inference.proxy import ProxyCall
from gateway.inference.sampling import CHAT_DEFAULTS, COMPLETION_DEFAULTS

CHAT_COMPLETIONS = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def build_openai_router() -> APIRouter:
    router = APIRouter(tags=["openai"], route_class=CallerRoute)

    # The inference routes first: the router tries routes in order, and these are the hot ones.
    @router.post(CHAT_COMPLETIONS)
    async def chat_completions(caller: CallerDep) -> Response:
        raw, body = await read_body(caller, ChatCompletionRequest)
        call = ProxyCall(
            CHAT_COMPLETIONS,
            body.model,
            body.stream,
            raw,
            client_asked_usage=body.asks_for_usage,
            defaults=CHAT_DEFAULTS,
            sent=body.sent_keys,
            affinity=caller_affinity(caller, body.user),
        )
        return await admit_and_forward(caller, call)

    @router.post(COMPLETIONS)
    async def completions(caller: CallerDep) -> Response:
        raw, body = await read_body(caller, CompletionRequest)
        call = ProxyCall(
            COMPLETIONS,
            body.model,
            body.stream,
            raw,
            client_asked_usage=body.asks_for_usage,
            defaults=COMPLETION_DEFAULTS,
            sent=body.sent_keys,
            affinity=caller_affinity(caller, body.user),
        )
        return await admit_and_forward(caller, call)

    router.include_router(build_responses_router())
    router.include_router(build_models_router())
    router.include_router(build_tokenize_router())
    return router
