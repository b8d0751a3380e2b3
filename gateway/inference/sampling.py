"""Default sampling parameters: which of them a request gets, and adding them to its JSON.

Defaults come in layers, later ones winning key by key: the base model's (its model card's
recommendation, from the recipe in :mod:`gateway.engines.basemodels`), then the adapter's (its
manifest's ``sampling_defaults``, or what the admin API set; shape and bounds in
:mod:`adapters.sampling`), then what the client sent, which always wins. A key the client sent
as ``null`` counts as not sent (OpenAI's meaning of null: "the default").

Each endpoint spells the parameters its own way (:class:`DefaultsTarget`): the Responses API
says ``max_output_tokens``, Anthropic's Messages API ``stop_sequences``; a parameter an endpoint
does not have is not added. The routes decide, on the PARSED request, which keys were sent; the
proxy (:mod:`gateway.inference.proxy`) calls :func:`defaults_to_send` once the request is
routed and :func:`add_fields` on the client's JSON before forwarding it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from adapters.sampling import SAMPLING_KEYS

#: A checked ``sampling_defaults`` object (:func:`adapters.sampling.validate_sampling_defaults`).
SamplingDefaults = Mapping[str, Any]

# Any ASCII letter or "_" spelled as an escape: a key may be one of ours in disguise.
_ASCII_ESCAPE = re.compile(rb"\\u00[2-7][0-9a-fA-F]")


@dataclass(frozen=True, slots=True)
class DefaultsTarget:
    """How one endpoint spells the sampling parameters."""

    #: default key -> the endpoint's body key; keys not here do not apply to the endpoint.
    keys: Mapping[str, str]
    #: body key -> other body keys that, when sent, mean the client chose that parameter.
    alternates: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


_ALL = {key: key for key in SAMPLING_KEYS}
CHAT_DEFAULTS = DefaultsTarget(_ALL, {"max_tokens": ("max_completion_tokens",)})
COMPLETION_DEFAULTS = DefaultsTarget(_ALL)
RESPONSES_DEFAULTS = DefaultsTarget(
    {
        "temperature": "temperature",
        "top_p": "top_p",
        "top_k": "top_k",
        "min_p": "min_p",
        "repetition_penalty": "repetition_penalty",
        "max_tokens": "max_output_tokens",
    }
)
MESSAGES_DEFAULTS = DefaultsTarget(
    {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "stop": "stop_sequences"}
)


def layered(layers: Sequence[SamplingDefaults | None]) -> SamplingDefaults | None:
    """One set of defaults from several, later layers winning key by key."""
    present = [layer for layer in layers if layer]
    if len(present) <= 1:
        return present[0] if present else None
    merged: dict[str, Any] = {}
    for layer in present:
        merged.update(layer)
    return merged


def defaults_to_send(
    target: DefaultsTarget, defaults: SamplingDefaults | None, sent: Collection[str]
) -> dict[str, Any]:
    """The body fields to add: each default the endpoint knows and the client did not send."""
    if not defaults:
        return {}
    out: dict[str, Any] = {}
    for key, value in defaults.items():
        body_key = target.keys.get(key)
        if body_key is None or body_key in sent:
            continue
        if any(other in sent for other in target.alternates.get(body_key, ())):
            continue
        out[body_key] = value
    return out


def add_fields(body: bytes, fields: Mapping[str, Any]) -> bytes:
    """The client's JSON object with ``fields`` set at its top level (replacing a ``null``).

    When the body cannot already hold one of these keys (no plain spelling, no escaped letter)
    they are spliced in after the opening brace and every byte of the client's JSON is kept;
    otherwise the body is parsed and written again (compact).
    """
    if not fields:
        return body
    plain = _ASCII_ESCAPE.search(body) is None and not any(
        json.dumps(key).encode() in body for key in fields
    )
    start = body.find(b"{")
    if plain and start >= 0:
        spliced = json.dumps(fields, separators=(",", ":")).encode()[1:-1]
        rest = body[start + 1 :]
        separator = b"" if rest.lstrip().startswith(b"}") else b","
        return body[: start + 1] + spliced + separator + rest
    payload = json.loads(body)
    payload.update(fields)
    return json.dumps(payload, separators=(",", ":")).encode()
