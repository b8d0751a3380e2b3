""":class:`CallerRoute`: FastAPI's route class for the inference endpoints, minus the per-request
dependency solving.

The routers of :mod:`gateway.api.openai` and :mod:`gateway.api.anthropic` are built with it. A
route whose only dependencies are the ``/v1`` authentication and the caller
(:data:`gateway.api.deps.CallerDep`), and that takes nothing else from the request, is answered
by calling those two providers directly: FastAPI's generic handler walks the dependency tree,
builds parameter dicts and an endpoint context on every request, which cost a tenth of the CPU
of a proxied request (``python -m loadtest.cpu_profile --py-spy``). Every other route, and every
route while the app has dependency overrides (tests), takes FastAPI's own handler, so the
result is the same either way: the same providers, the same errors, the same response. The
route stays an :class:`~fastapi.routing.APIRoute` (OpenAPI schema, exception handling and the
request's exit stacks are FastAPI's).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from gateway.api.deps import get_caller, get_principal

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class CallerRoute(APIRoute):
    def get_route_handler(self) -> Handler:
        generic = super().get_route_handler()
        dependant = self.dependant
        calls = [dep.call for dep in dependant.dependencies]
        takes_only_the_caller = (
            calls == [get_principal, get_caller]
            and not dependant.path_params
            and not dependant.query_params
            and not dependant.header_params
            and not dependant.cookie_params
            and not dependant.body_params
            and dependant.request_param_name is None
            and dependant.background_tasks_param_name is None
            and dependant.response_param_name is None
            and self.body_field is None
            and dependant.is_coroutine_callable
        )
        if not takes_only_the_caller:
            return generic
        endpoint = self.endpoint
        overrides = self.dependency_overrides_provider
        name = dependant.dependencies[1].name  # the endpoint's parameter for the caller
        if name is None:
            return generic

        async def handler(request: Request) -> Response:
            if overrides is not None and getattr(overrides, "dependency_overrides", None):
                return await generic(request)
            caller = await get_caller(request, await get_principal(request))
            response: Response = await endpoint(**{name: caller})
            return response

        return handler
