"""The Responses API's state: which engine stored a response, told by the response's own id.

vLLM keeps a stored response (``store``, ``background``) in one engine process's memory, so a
later ``GET``, ``cancel`` or ``previous_response_id`` must reach that engine. The gateway names
the engine in the id it asks the engine to use (vLLM's ``request_id`` becomes the response's
``id``): ``resp_<engine tag>_<random>``, the tag a hash of the engine's URL. Every gateway
replica configured with the same engine URLs reads the same id the same way; nothing is kept in
the gateway's memory. An id whose tag names no engine of this gateway is a clear 404.

Also the rename of engine answers that were not routed by model (a retrieved response names
the adapter version that made it, ``NAME@vN.tag``; the client sees ``NAME``). Used by
:mod:`gateway.api.openai.responses` and :mod:`gateway.inference.proxy`.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Sequence

from adapters.registry import UPSTREAM_NAME_PATTERN
from gateway.engines.base import Engine
from gateway.errors import ResponseNotFoundError

RESPONSE_ID_PREFIX = "resp_"
_TAG_CHARS = 10
#: Longest response id accepted from a client (ours are 48 characters).
MAX_RESPONSE_ID = 128
_RESPONSE_ID = re.compile(r"resp_([0-9a-f]{10})_[0-9a-f]{32}")


def engine_tag(engine: Engine) -> str:
    return hashlib.sha256(engine.url.rstrip("/").encode()).hexdigest()[:_TAG_CHARS]


def new_response_id(engine: Engine) -> str:
    """An id for a response ``engine`` is about to make (and maybe store)."""
    return f"{RESPONSE_ID_PREFIX}{engine_tag(engine)}_{uuid.uuid4().hex}"


def engine_of_response(response_id: str, engines: Sequence[Engine], *, param: str) -> Engine:
    """The engine that made ``response_id``; ResponseNotFoundError (404) when none of ours."""
    shown = response_id if len(response_id) <= MAX_RESPONSE_ID else response_id[:64] + "..."
    found = _RESPONSE_ID.fullmatch(response_id)
    if found is None:
        raise ResponseNotFoundError(
            f"Response with id '{shown}' not found: not an id this gateway gave out.", param=param
        )
    for engine in engines:
        if engine_tag(engine) == found.group(1):
            return engine
    raise ResponseNotFoundError(
        f"Response with id '{shown}' not found: the engine that stored it is no longer one of "
        "this gateway's engines.",
        param=param,
    )


_VERSIONED_MODEL = re.compile(rb'("model"[ ]?:[ ]?")' + UPSTREAM_NAME_PATTERN.encode() + rb'"')


def rename_versioned_models(data: bytes) -> bytes:
    """Every ``"model":"NAME@vN.tag"`` in ``data`` as ``"model":"NAME"``."""
    if b"@v" not in data:
        return data
    return _VERSIONED_MODEL.sub(rb'\1\g<name>"', data)
