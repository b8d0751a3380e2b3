"""The one admit-and-forward path of every model-routed call: read and validate the body, admit
it under the caller's key, forward it, and finish the admission when the answer is complete.

Every route that sends a client's body to an engine (chat and completions in
:mod:`gateway.api.openai.routes`, tokenize and detokenize, the Responses API, Anthropic's
Messages) takes one :data:`~gateway.api.deps.CallerDep`, reads its body with :func:`read_body`
(one parse, in pydantic's JSON mode) and hands the :class:`~gateway.inference.proxy.ProxyCall` it
built to :func:`admit_and_forward`: :meth:`gateway.auth.tenants.Tenants.admit` (a 404 out of
the key's scope, a 429 over a limit), then the proxy, under :func:`forward_admitted`. The call
is built before admission, so a request refused while building it (an unknown response id)
holds no slot. One dependency and one function keep the hot path short: each FastAPI
dependency costs a resolution per request.

The limit headers go on the answer, the tokens are charged and the concurrency slot is freed
when the answer is complete. The answer is wrapped in
:class:`AdmittedResponse`, a plain ASGI wrapper and not a background task, so the charge runs
however the response ends: complete, failed mid-stream or dropped by the client. It reads the
token counts the proxy put on the request's record (the engine's own counts, streams included).
:func:`caller_affinity` is what an alias's version split sticks by for the admitted caller.
"""

from __future__ import annotations

from collections.abc import Awaitable

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from gateway.api.deps import Caller
from gateway.api.openai.body import Body, parse_body
from gateway.auth.limits import Admission
from gateway.errors import GatewayError
from gateway.inference.aliases import affinity_of
from gateway.inference.proxy import ProxyCall
from gateway.inference.record import RequestInfo


class AdmittedResponse(Response):
    """``inner`` with the admission's headers added; the admission finished after it ran."""

    def __init__(self, inner: Response, admission: Admission, info: RequestInfo) -> None:
        # Not Response.__init__: nothing is rendered here, ``inner`` sends everything.
        self.inner = inner
        self.status_code = inner.status_code
        self.background = None
        self.raw_headers = inner.raw_headers
        self._admission = admission
        self._info = info
        self._extra = [(k.encode(), v.encode()) for k, v in admission.headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *self._extra]
            await send(message)

        try:
            await self.inner(scope, receive, send_with_headers)
        finally:
            await self._admission.finish(self._info)


async def read_body(caller: Caller, schema: type[Body]) -> tuple[bytes, Body]:
    """The client's raw body (forwarded byte for byte) and its validated form (400 if bad)."""
    raw = await caller.request.body()
    return raw, parse_body(schema, raw)


async def admit_and_forward(caller: Caller, call: ProxyCall) -> Response:
    """Admit ``call`` under the caller's key for its model, then forward it to the engine."""
    if call.model is None:
        raise ValueError("only a call routed by model is admitted")
    services = caller.services
    admission = await services.tenants.admit(caller.principal, call.model)
    info = caller.info
    return await forward_admitted(
        admission, info, services.proxy.forward(call, info, caller.request.receive)
    )


async def forward_admitted(
    admission: Admission, info: RequestInfo, answer: Awaitable[Response]
) -> Response:
    """Await the proxy's answer; an error before it (an engine 5xx, a timeout) frees the slot
    and carries the limit headers too."""
    try:
        response = await answer
    except GatewayError as exc:
        exc.headers.update(admission.headers)
        await admission.finish(info)
        raise
    except BaseException:
        await admission.finish(info)
        raise
    if not admission.holds_anything:
        return response
    return AdmittedResponse(response, admission, info)


def caller_affinity(caller: Caller, user: str | None = None) -> str:
    """What an alias's version split sticks by for this request: ``user``, else the caller's
    key, else the client's address (:func:`gateway.inference.aliases.affinity_of`)."""
    key = caller.principal.key
    client = caller.request.client
    return affinity_of(
        user, key.id if key is not None else None, client.host if client is not None else None
    )
