"""Which models to load when the user names none: ask the server's ``GET /v1/models``.

Every adapter (an entry with a ``parent``: vLLM and this gateway both mark adapters so), plus
the base models with ``include_base``; a server with no adapters is loaded through its base
model. Called by :class:`loadtest.locustfile.RunConfig` when no ``--model``, ``--adapters`` or
``--adapter-prefix`` is given, so ``locust -f loadtest/locustfile.py --host URL`` works as is.
"""

from __future__ import annotations

from typing import Any

import httpx

DISCOVERY_TIMEOUT_S = 30.0
#: At most this many models from one listing (a mix over more says nothing new).
MAX_MODELS = 10_000


class DiscoveryError(RuntimeError):
    pass


def pick_models(listing: Any, *, include_base: bool) -> list[str]:
    """Model ids from a ``/v1/models`` body: the adapters, and the bases if asked or if there
    is no adapter."""
    data = listing.get("data") if isinstance(listing, dict) else None
    if not isinstance(data, list):
        raise DiscoveryError("the /v1/models answer has no 'data' list")
    bases: list[str] = []
    adapters: list[str] = []
    for entry in data[:MAX_MODELS]:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            continue
        (adapters if entry.get("parent") else bases).append(entry["id"])
    chosen = [*bases, *adapters] if include_base or not adapters else adapters
    if not chosen:
        raise DiscoveryError("the server lists no models")
    return chosen


def discover_models(host: str, headers: dict[str, str], *, include_base: bool) -> list[str]:
    """``GET {host}/v1/models`` and :func:`pick_models`; a clear error when it fails."""
    url = host.rstrip("/") + "/v1/models"
    try:
        response = httpx.get(url, headers=headers, timeout=DISCOVERY_TIMEOUT_S)
    except httpx.HTTPError as exc:
        raise DiscoveryError(f"cannot list the models at {url}: {exc}") from exc
    if response.status_code != 200:
        raise DiscoveryError(
            f"listing the models at {url} failed: HTTP {response.status_code} "
            f"{response.text[:200]} (a gateway with keys needs --api-key)"
        )
    try:
        listing = response.json()
    except ValueError as exc:
        raise DiscoveryError(f"{url} did not answer JSON") from exc
    return pick_models(listing, include_base=include_base)
