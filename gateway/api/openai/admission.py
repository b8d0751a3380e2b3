"""Run one OpenAI call under its key's admission: the limit headers on the answer, the tokens
charged and the concurrency slot freed when the answer is complete.

The OpenAI routes (:mod:`gateway.api.openai.routes`) call :func:`forward_admitted` once a body
is validated and :meth:`gateway.auth.tenants.Tenants.admit` let it in. The answer is wrapped in
:class:`AdmittedResponse`, a plain ASGI wrapper and not a background task, so the charge runs
however the response ends: complete, failed mid-stream or dropped by the client. It reads the
token counts the proxy put on the request's record (the engine's own counts, streams included).
"""

from __future__ import annotations

from collections.abc import Awaitable

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from gateway.auth.limits import Admission
from gateway.errors import GatewayError
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
