"""The Responses API: ``POST /v1/responses`` (streamed and not), ``GET /v1/responses/{id}``,
``POST /v1/responses/{id}/cancel`` and ``DELETE /v1/responses/{id}``.

A new response is routed by ``model`` like a chat completion (adapters, sampling defaults, usage,
the model renamed on every event), and gets an id that names its engine
(:mod:`gateway.inference.responses`): vLLM keeps a stored response in that engine's memory
only, so ``previous_response_id``, retrieval and cancel go to the engine the id names, whichever
gateway replica they reach; an id that names no engine of this gateway is a 404
``response_not_found``. vLLM 0.32 cannot delete a stored response (it keeps it until the engine
restarts), so DELETE says so (501) rather than pretend. Included by
:func:`gateway.api.openai.routes.build_openai_router`.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Path, Query, Request
from starlette.responses import Response

from gateway.api.caller_route import CallerRoute
from gateway.api.deps import CallerDep, ProxyDep, RequestInfoDep, RouterDep
from gateway.api.openai.admission import admit_and_forward, caller_affinity, read_body
from gateway.api.openai.protocol import MAX_RESPONSE_ID, ResponsesRequest
from gateway.errors import NotSupportedError
from gateway.inference.proxy import ProxyCall, StreamKind
from gateway.inference.responses import engine_of_response
from gateway.inference.sampling import RESPONSES_DEFAULTS

RESPONSES = "/v1/responses"

ResponseId = Annotated[str, Path(min_length=1, max_length=MAX_RESPONSE_ID)]


def build_responses_router() -> APIRouter:
    router = APIRouter(tags=["openai"], route_class=CallerRoute)

    @router.post(RESPONSES)
    async def create_response(caller: CallerDep) -> Response:
        raw, body = await read_body(caller, ResponsesRequest)
        engine = None
        if body.previous_response_id is not None:
            engine = engine_of_response(
                body.previous_response_id,
                caller.services.router.engines,
                param="previous_response_id",
            ).name
        call = ProxyCall(
            RESPONSES,
            body.model,
            body.stream,
            raw,
            defaults=RESPONSES_DEFAULTS,
            sent=body.sent_keys,
            engine=engine,
            stream_kind=StreamKind.RESPONSES,
            new_response_id=True,
            affinity=caller_affinity(caller, body.user),
        )
        return await admit_and_forward(caller, call)

    @router.get(RESPONSES + "/{response_id}")
    async def retrieve_response(
        response_id: ResponseId,
        request: Request,
        proxy: ProxyDep,
        routing: RouterDep,
        info: RequestInfoDep,
        stream: bool = False,
        starting_after: Annotated[int | None, Query(ge=0)] = None,
    ) -> Response:
        engine = engine_of_response(response_id, routing.engines, param="response_id")
        query = {"stream": "true"} if stream else {}
        if starting_after is not None:
            query["starting_after"] = str(starting_after)
        path = f"{RESPONSES}/{response_id}" + (f"?{urlencode(query)}" if query else "")
        call = ProxyCall(
            path,
            None,
            stream,
            b"",
            method="GET",
            engine=engine.name,
            stream_kind=StreamKind.RESPONSES,
        )
        return await proxy.forward(call, info, request.receive)

    @router.post(RESPONSES + "/{response_id}/cancel")
    async def cancel_response(
        response_id: ResponseId,
        request: Request,
        proxy: ProxyDep,
        routing: RouterDep,
        info: RequestInfoDep,
    ) -> Response:
        engine = engine_of_response(response_id, routing.engines, param="response_id")
        call = ProxyCall(f"{RESPONSES}/{response_id}/cancel", None, False, b"", engine=engine.name)
        return await proxy.forward(call, info, request.receive)

    @router.delete(RESPONSES + "/{response_id}")
    async def delete_response(response_id: ResponseId, routing: RouterDep) -> Response:
        engine_of_response(response_id, routing.engines, param="response_id")
        raise NotSupportedError(
            "vLLM 0.32 cannot delete a stored response: it keeps it in the engine's memory "
            "until the engine restarts.",
            param="response_id",
        )

    return router
