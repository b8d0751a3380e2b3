"""The ``Server-Timing`` response header: the gateway's cost, visible on every proxied answer.

The request middleware (:mod:`gateway.api.middleware`) calls :func:`server_timing_header` when a
response starts; the proxy (:mod:`gateway.inference.proxy`) has by then stamped when it sent the
request to the engine and when the engine's headers came back. Two metrics, in milliseconds
(https://www.w3.org/TR/server-timing/):

* ``gw-pre``: the gateway's own time before the engine had the request;
* ``upstream``: the engine's time to its first byte.

The gateway's time after the engine's last byte is not known when a header must go out (a
stream's headers leave before its body), and an HTTP trailer would not reach SSE clients
(browsers' ``EventSource``, the ``openai`` SDK ignore trailers): it is in the access log
(``gw_post_ms``) and the ``lora_gateway_overhead_seconds{phase="post"}`` histogram instead.
Answers the gateway made without the engine (errors, ``/v1/models``) carry no header.
"""

from __future__ import annotations

from gateway.inference.record import RequestInfo

SERVER_TIMING_HEADER = b"server-timing"


def server_timing_header(info: RequestInfo) -> tuple[bytes, bytes] | None:
    """The header for this request as far as it has gone, or None before the engine answered."""
    pre, upstream = info.gateway_pre_s, info.upstream_ttfb_s
    if pre is None or upstream is None:
        return None
    value = f"gw-pre;dur={pre * 1000.0:.3f}, upstream;dur={upstream * 1000.0:.3f}"
    return SERVER_TIMING_HEADER, value.encode()
