"""``GET /v1/models`` and ``GET /v1/models/{id}`` (the SDK's ``models.list`` / ``models.retrieve``).

What the :class:`~gateway.inference.routing.Router` can route to: the base model and every
servable registered adapter the caller's key may use, with vLLM's lineage fields (``root``,
``parent``). An id nobody serves (or the key may not use) is a 404 ``model_not_found``, the same
answer a completion for it gets. A limited key's answers carry its x-ratelimit-* headers
(nothing counted). Included by
:func:`gateway.api.openai.routes.build_openai_router`.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from gateway.api.deps import PrincipalDep, RouterDep, limit_headers_for
from gateway.api.openai.protocol import ModelCard, ModelList
from gateway.inference.routing import PublicModel, unknown_model


def model_card(model: PublicModel) -> ModelCard:
    return ModelCard(
        id=model.id,
        created=model.created,
        owned_by=model.owned_by,
        root=model.root or model.id,
        parent=model.parent,
    )


def build_models_router() -> APIRouter:
    router = APIRouter(tags=["openai"])

    @router.get("/v1/models", response_model=ModelList)
    async def list_models(
        request: Request, response: Response, routing: RouterDep, principal: PrincipalDep
    ) -> ModelList:
        response.headers.update(await limit_headers_for(request))
        return ModelList(
            data=[model_card(m) for m in routing.public_models() if principal.may_use(m.id)]
        )

    # ``:path``: a base model is often served under its Hub id, ``org/name``.
    @router.get("/v1/models/{model_id:path}", response_model=ModelCard)
    async def retrieve_model(
        model_id: str,
        request: Request,
        response: Response,
        routing: RouterDep,
        principal: PrincipalDep,
    ) -> ModelCard:
        for model in routing.public_models():
            if model.id == model_id and principal.may_use(model.id):
                response.headers.update(await limit_headers_for(request))
                return model_card(model)
        raise unknown_model(model_id)

    return router
