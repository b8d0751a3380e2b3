"""Register a trained adapter with a running gateway through its admin API.

    lora-trainer train ... --register http://127.0.0.1:8000 --name legal-lora
    lora-trainer register adapters/legal-lora --url http://127.0.0.1:8000 --name legal-lora

Called by ``lora-trainer train --register``, ``lora-trainer combine --register`` and
``lora-trainer register`` (:mod:`trainer.cli`).
The trainer's policy over the one admin client (:class:`adapters.client.AdminClient`): the
adapter is loaded into the engine at once (a refusal shows now, not at the first request) and
a retrained adapter under a registered name becomes that name's next version (the gateway keeps
the older ones; same content is a no-op). Failures are :class:`adapters.errors.AdapterError`
(a refusal is a :class:`adapters.client.ClientError` carrying the gateway's message).
"""

from __future__ import annotations

from pathlib import Path

import httpx

from adapters.client import DEFAULT_TIMEOUT_S, AdminClient, JSONObject


def register_adapter(
    gateway_url: str,
    name: str,
    path: Path,
    *,
    token: str | None = None,
    load: bool = True,
    new_version: bool = True,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    transport: httpx.BaseTransport | None = None,
) -> JSONObject:
    """Register ``path`` as adapter ``name``; return the gateway's JSON answer."""
    with AdminClient(gateway_url, token, timeout_s=timeout_s, transport=transport) as admin:
        return admin.register(name, path, load=load, new_version=new_version)
