"""Register a trained adapter with a running gateway through its admin API.

    lora-trainer train ... --register http://127.0.0.1:8000 --name legal-lora
    lora-trainer register adapters/legal-lora --url http://127.0.0.1:8000 --name legal-lora

Called by ``lora-trainer train --register`` / ``lora-trainer register`` (:mod:`trainer.cli`)
and the legal demo. One ``POST {url}/admin/adapters`` with ``{"name", "path", "load",
"new_version"}`` and ``Authorization: Bearer <admin token>`` (``--admin-token`` or
``LORA_GATEWAY_ADMIN_TOKEN``). By default the adapter is loaded into the engine at once (a
refusal shows now, not at the first request) and a retrained adapter under a registered name
becomes that name's next version (the gateway keeps the older ones; same content is a no-op).
The gateway answers errors in the OpenAI shape ``{"error": {"message", "type", "code"}}``;
:class:`RegistrationError` shows them as one clear line. httpx only, no gateway import.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx

ADMIN_TOKEN_ENV = "LORA_GATEWAY_ADMIN_TOKEN"
ADMIN_ADAPTERS_PATH = "/admin/adapters"
MAX_ERROR_CHARS = 2000


class RegistrationError(RuntimeError):
    """The gateway could not be reached or refused the adapter."""

    def __init__(self, message: str, *, status: int | None = None, code: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def register_adapter(
    gateway_url: str,
    name: str,
    path: Path,
    *,
    token: str | None = None,
    load: bool = True,
    new_version: bool = True,
    timeout_s: float = 300.0,
    transport: httpx.BaseTransport | None = None,
) -> dict[str, Any]:
    """Register ``path`` as adapter ``name``; return the gateway's JSON answer."""
    token = token or os.environ.get(ADMIN_TOKEN_ENV)
    if not token:
        raise RegistrationError(f"no admin token: pass --admin-token or set {ADMIN_TOKEN_ENV}")
    url = admin_adapters_url(gateway_url)
    body = {
        "name": name,
        "path": str(Path(path).expanduser().resolve()),
        "load": load,
        "new_version": new_version,
    }
    headers = {"Authorization": f"Bearer {token}"}
    try:
        # Loading into the engine happens inside this request: allow it time to finish.
        with httpx.Client(
            timeout=httpx.Timeout(timeout_s, connect=10.0), transport=transport
        ) as http:
            response = http.post(url, json=body, headers=headers)
    except httpx.HTTPError as exc:
        raise RegistrationError(f"cannot reach the gateway at {url}: {exc}") from exc
    if response.is_success:
        try:
            answer = response.json()
        except ValueError:
            answer = {"text": response.text[:MAX_ERROR_CHARS]}
        return answer if isinstance(answer, dict) else {"answer": answer}
    raise _refusal(response, url)


def admin_adapters_url(gateway_url: str) -> str:
    base = gateway_url.strip().rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise RegistrationError(
            f"gateway URL must start with http:// or https://, got {gateway_url!r}"
        )
    base = base.removesuffix("/v1")  # people paste the OpenAI base URL
    return base + ADMIN_ADAPTERS_PATH


def _refusal(response: httpx.Response, url: str) -> RegistrationError:
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict) and "message" in error:
        kind = error.get("type") or "error"
        code = error.get("code")
        detail = f"{kind}{f', code {code}' if code is not None else ''}"
        message = str(error["message"])[:MAX_ERROR_CHARS]
        return RegistrationError(
            f"the gateway refused the adapter (HTTP {response.status_code} {detail}): {message}",
            status=response.status_code,
            code=code,
        )
    text = response.text.strip()[:MAX_ERROR_CHARS] or response.reason_phrase
    return RegistrationError(
        f"the gateway answered HTTP {response.status_code} at {url}: {text}",
        status=response.status_code,
    )
