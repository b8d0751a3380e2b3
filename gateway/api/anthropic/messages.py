"""Anthropic's ``POST /v1/messages`` (streamed and not) and ``POST /v1/messages/count_tokens``.

Routed by ``model`` like the OpenAI endpoints: adapters, sampling defaults (``stop`` is spelled
``stop_sequences`` here), the model renamed in answers and on every event, usage for metrics
and the access log (a stream's is in its ``message_delta`` event). Errors keep the gateway's one
shape, whose ``error.type`` and ``error.message`` are what Anthropic clients read. Included by
:func:`gateway.app.create_app` beside the OpenAI routes, behind the same API keys (the
``anthropic`` SDK sends its key as ``x-api-key``, which :mod:`gateway.auth.client_keys` reads).
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from gateway.api.anthropic.protocol import CountTokensRequest, MessagesRequest
from gateway.api.caller_route import CallerRoute
from gateway.api.deps import CallerDep
from gateway.api.openai.admission import admit_and_forward, caller_affinity, read_body
from gateway.inference.proxy import ProxyCall, StreamKind
from gateway.inference.sampling import MESSAGES_DEFAULTS

MESSAGES = "/v1/messages"
COUNT_TOKENS = "/v1/messages/count_tokens"


def build_messages_router() -> APIRouter:
    router = APIRouter(tags=["anthropic"], route_class=CallerRoute)

    @router.post(MESSAGES)
    async def create_message(caller: CallerDep) -> Response:
        raw, body = await read_body(caller, MessagesRequest)
        call = ProxyCall(
            MESSAGES,
            body.model,
            body.stream,
            raw,
            defaults=MESSAGES_DEFAULTS,
            sent=body.sent_keys,
            stream_kind=StreamKind.MESSAGES,
            affinity=caller_affinity(caller),
        )
        return await admit_and_forward(caller, call)

    @router.post(COUNT_TOKENS)
    async def count_tokens(caller: CallerDep) -> Response:
        raw, body = await read_body(caller, CountTokensRequest)
        return await admit_and_forward(caller, ProxyCall(COUNT_TOKENS, body.model, False, raw))

    return router
