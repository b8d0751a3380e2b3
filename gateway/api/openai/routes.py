"""The OpenAI-compatible routes: ``GET /v1/models``, ``POST /v1/chat/completions``,
``POST /v1/completions``.

Thin: read the body, validate it against :mod:`gateway.api.openai.protocol` (one parse, in
pydantic's JSON mode), hand the client's own bytes to :class:`gateway.inference.proxy.OpenAIProxy`,
which routes, forwards and renders. :func:`build_openai_router` is included by
:func:`gateway.app.create_app`, behind the API-key dependency when keys are configured.
"""

from __future__ import annotations

from typing import TypeVar

from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import Response

from gateway.api.deps import PrincipalDep, ProxyDep, RequestInfoDep, RouterDep, TenantsDep
from gateway.api.error_handlers import validation_error
from gateway.api.openai.admission import forward_admitted
from gateway.api.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
)
from gateway.errors import InvalidRequestError
from gateway.inference.proxy import ProxyCall

CHAT_COMPLETIONS = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"

Body = TypeVar("Body", ChatCompletionRequest, CompletionRequest)


def parse_body(schema: type[Body], raw: bytes) -> Body:
    """Validate a request body; every failure is a 400 in the OpenAI shape."""
    if not raw.strip():
        raise InvalidRequestError("The request body is empty: expected a JSON object.")
    try:
        return schema.model_validate_json(raw)
    except ValidationError as exc:
        if any(error["type"] == "json_invalid" for error in exc.errors()):
            raise InvalidRequestError(
                "The request body is not valid JSON.", code="invalid_json"
            ) from None
        raise validation_error(exc) from None


def build_openai_router() -> APIRouter:
    router = APIRouter(tags=["openai"])

    @router.get("/v1/models", response_model=ModelList)
    async def list_models(routing: RouterDep, principal: PrincipalDep) -> ModelList:
        return ModelList(
            data=[
                ModelCard(
                    id=m.id,
                    created=m.created,
                    owned_by=m.owned_by,
                    root=m.root or m.id,
                    parent=m.parent,
                )
                for m in routing.public_models()
                if principal.may_use(m.id)
            ]
        )

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
        call = ProxyCall(CHAT_COMPLETIONS, body.model, body.stream, raw)
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
        call = ProxyCall(COMPLETIONS, body.model, body.stream, raw)
        return await forward_admitted(admission, info, proxy.forward(call, info, request.receive))

    return router
