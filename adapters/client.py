"""The one client of the gateway's admin API (``/admin/adapters``, ``/admin/status``,
``/admin/keys``, ``/admin/aliases``), over httpx.

    with AdminClient("http://127.0.0.1:8000", token) as admin:
        admin.register("legal-lora", Path("adapters/legal-lora"), load=True, new_version=True)
        admin.list(); admin.get(name); admin.load(name); admin.unload(name)
        admin.restore(name, 1); admin.set_pinned(name, True); admin.delete(name)
        admin.status()  # engines, slots, adapters, requests in flight
        admin.create_key({"name": "team-a"}); admin.list_keys(); admin.rotate_key("team-a")
        admin.put_alias("legal", [{"adapter": "legal-lora", "version": 3, "weight": 100}])
        admin.list_aliases(); admin.get_alias("legal"); admin.delete_alias("legal")

Used by the gateway's CLI (``lora-gateway adapters ...``, :mod:`gateway.commands.adapters`),
the trainer's ``--register`` (:mod:`trainer.register`), the benchmark (:mod:`loadtest`) and
the examples. Synchronous: each of them is a command-line program.

Errors are :class:`adapters.errors.AdapterError`: :class:`ClientError` when the gateway answered
with an error (its OpenAI-shaped ``{"error": {"message", "type", "code"}}`` is kept: status,
type, code, message; the kind follows the status), kind UNAVAILABLE when it cannot be reached,
INVALID for a bad URL or a missing token. The base URL may be given with the OpenAI ``/v1``
suffix people paste. Imports nothing from the gateway.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from adapters.errors import AdapterError, AdapterErrorKind

ADMIN_TOKEN_ENV = "LORA_GATEWAY_ADMIN_TOKEN"
ADMIN_ADAPTERS_PATH = "/admin/adapters"
ADMIN_STATUS_PATH = "/admin/status"
ADMIN_KEYS_PATH = "/admin/keys"
ADMIN_ALIASES_PATH = "/admin/aliases"
#: A load waits for the engine and a registration hashes and copies the weights.
DEFAULT_TIMEOUT_S = 300.0
CONNECT_TIMEOUT_S = 10.0
MAX_ERROR_CHARS = 2000

JSONObject = dict[str, Any]
JSONObjects = list[JSONObject]

_KIND_BY_STATUS = {
    400: AdapterErrorKind.INVALID,
    401: AdapterErrorKind.FORBIDDEN,
    403: AdapterErrorKind.FORBIDDEN,
    404: AdapterErrorKind.NOT_FOUND,
    409: AdapterErrorKind.CONFLICT,
    413: AdapterErrorKind.TOO_LARGE,
    422: AdapterErrorKind.INVALID,
}


class ClientError(AdapterError):
    """The gateway answered an admin call with an error status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str | None = None,
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        kind = _KIND_BY_STATUS.get(
            status,
            AdapterErrorKind.UNAVAILABLE
            if status in (502, 503, 504)
            else AdapterErrorKind.INTERNAL,
        )
        super().__init__(kind, message, code=code, param=param)
        self.status = status
        self.error_type = error_type

    def __str__(self) -> str:
        code = f", {self.code}" if self.code else ""
        return f"{self.message} (HTTP {self.status}{code})"


def gateway_base_url(url: str) -> str:
    """``http(s)://host:port`` from what a user typed (a trailing ``/`` or ``/v1`` is fine)."""
    base = url.strip().rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise AdapterError(
            AdapterErrorKind.INVALID,
            f"gateway URL must start with http:// or https://, got {url[:200]!r}",
            code="invalid_url",
        )
    return base.removesuffix("/v1")


class AdminClient:
    """Calls the admin API of the gateway at ``url`` with the admin ``token``.

    ``token`` defaults to ``$LORA_GATEWAY_ADMIN_TOKEN``; ``transport`` lets a test answer.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = gateway_base_url(url)
        token = token or os.environ.get(ADMIN_TOKEN_ENV)
        if not token:
            raise AdapterError(
                AdapterErrorKind.INVALID,
                f"no admin token: pass --admin-token or set {ADMIN_TOKEN_ENV}",
                code="admin_token_missing",
            )
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(timeout_s, connect=CONNECT_TIMEOUT_S),
            transport=transport,
        )

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- the admin API, one method per route ---------------------------------------------------
    def register(
        self,
        name: str,
        path: str | Path,
        *,
        pinned: bool | None = None,
        load: bool = False,
        new_version: bool = False,
    ) -> JSONObject:
        """``POST /admin/adapters``; ``path`` is sent absolute (the gateway reads it)."""
        body: JSONObject = {
            "name": name,
            "path": str(Path(path).expanduser().resolve()),
            "load": load,
            "new_version": new_version,
        }
        if pinned is not None:
            body["pinned"] = pinned
        return self._call("POST", ADMIN_ADAPTERS_PATH, body)

    def register_source(
        self,
        name: str,
        source: str,
        *,
        wait: bool = True,
        pinned: bool | None = None,
        load: bool = False,
        new_version: bool = False,
    ) -> JSONObject:
        """``POST /admin/adapters`` with a remote ``source`` (``s3://``, ``hf://``): the
        registered adapter, or with ``wait=False`` (or a fetch outlasting the gateway's bound)
        the fetch in progress (``object: adapter.fetch``)."""
        body: JSONObject = {
            "name": name,
            "source": source,
            "load": load,
            "new_version": new_version,
        }
        if pinned is not None:
            body["pinned"] = pinned
        path = f"{ADMIN_ADAPTERS_PATH}?wait=true" if wait else ADMIN_ADAPTERS_PATH
        return self._call("POST", path, body)

    def fetches(self) -> list[JSONObject]:
        """The fetches of names with no registered version yet (in progress or failed)."""
        fetching = self._call("GET", ADMIN_ADAPTERS_PATH).get("fetching", [])
        if not isinstance(fetching, list):
            raise self._unexpected(ADMIN_ADAPTERS_PATH, "fetching is not a list")
        return fetching

    def list(self) -> list[JSONObject]:
        data = self._call("GET", ADMIN_ADAPTERS_PATH).get("data")
        if not isinstance(data, list):
            raise self._unexpected(ADMIN_ADAPTERS_PATH, "no data list")
        return data

    def get(self, name: str) -> JSONObject:
        return self._call("GET", _adapter_path(name))

    def delete(self, name: str) -> None:
        self._call("DELETE", _adapter_path(name), expect_body=False)

    def load(self, name: str) -> JSONObject:
        return self._call("POST", _adapter_path(name, "load"))

    def unload(self, name: str) -> JSONObject:
        return self._call("POST", _adapter_path(name, "unload"))

    def restore(self, name: str, version: int) -> JSONObject:
        return self._call("POST", _adapter_path(name, "restore"), {"version": version})

    def set_pinned(self, name: str, pinned: bool) -> JSONObject:
        return self._call("PATCH", _adapter_path(name), {"pinned": pinned})

    def status(self) -> JSONObject:
        """``GET /admin/status``: engines, adapter slots, adapters, requests in flight."""
        return self._call("GET", ADMIN_STATUS_PATH)

    # --- client keys (/admin/keys) -------------------------------------------------------------
    def create_key(self, body: JSONObject) -> JSONObject:
        """``{name, models?, limits?, expires_at?}``; the answer holds the secret, once."""
        return self._call("POST", ADMIN_KEYS_PATH, body)

    def list_keys(self) -> JSONObjects:
        data = self._call("GET", ADMIN_KEYS_PATH).get("data")
        if not isinstance(data, list):
            raise self._unexpected(ADMIN_KEYS_PATH, "no 'data' list")
        return data

    def get_key(self, key: str) -> JSONObject:
        return self._call("GET", _key_path(key))

    def update_key(self, key: str, body: JSONObject) -> JSONObject:
        return self._call("PATCH", _key_path(key), body)

    def revoke_key(self, key: str) -> JSONObject:
        return self._call("POST", _key_path(key, "revoke"))

    def rotate_key(self, key: str) -> JSONObject:
        """A new secret for the key (in the answer, once); the old one stops working."""
        return self._call("POST", _key_path(key, "rotate"))

    # --- aliases (/admin/aliases) -------------------------------------------------------------
    def put_alias(self, name: str, targets: JSONObjects) -> JSONObject:
        """Create or replace alias ``name``: ``[{adapter, version, weight}, ...]``, weights in
        whole percents summing to 100."""
        return self._call("PUT", _alias_path(name), {"targets": targets})

    def list_aliases(self) -> JSONObjects:
        data = self._call("GET", ADMIN_ALIASES_PATH).get("data")
        if not isinstance(data, list):
            raise self._unexpected(ADMIN_ALIASES_PATH, "no 'data' list")
        return data

    def get_alias(self, name: str) -> JSONObject:
        return self._call("GET", _alias_path(name))

    def delete_alias(self, name: str) -> None:
        self._call("DELETE", _alias_path(name))

    # --- one request -------------------------------------------------------------------------
    def _call(
        self, method: str, path: str, body: JSONObject | None = None, *, expect_body: bool = True
    ) -> JSONObject:
        try:
            response = self._http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise AdapterError(
                AdapterErrorKind.UNAVAILABLE,
                f"cannot reach the gateway at {self.url}: {exc}",
                code="gateway_unreachable",
            ) from exc
        if response.status_code >= 400:
            raise self._refusal(response, path)
        if not expect_body or response.status_code == 204:
            return {}
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            raise self._unexpected(path, response.text[:MAX_ERROR_CHARS])
        return payload

    def _refusal(self, response: httpx.Response, path: str) -> ClientError:
        try:
            error = response.json().get("error")
        except (ValueError, AttributeError):
            error = None
        if isinstance(error, dict) and "message" in error:
            code, param, kind = error.get("code"), error.get("param"), error.get("type")
            return ClientError(
                response.status_code,
                str(error["message"])[:MAX_ERROR_CHARS],
                error_type=str(kind) if kind else None,
                code=str(code) if code is not None else None,
                param=str(param) if param is not None else None,
            )
        text = response.text.strip()[:MAX_ERROR_CHARS] or response.reason_phrase
        return ClientError(
            response.status_code, f"the gateway answered at {self.url}{path}: {text}"
        )

    def _unexpected(self, path: str, what: str) -> AdapterError:
        return AdapterError(
            AdapterErrorKind.INTERNAL,
            f"unexpected answer from {self.url}{path}: {what}",
            code="unexpected_answer",
        )


def _adapter_path(name: str, action: str | None = None) -> str:
    path = f"{ADMIN_ADAPTERS_PATH}/{quote(name, safe='')}"
    return f"{path}/{action}" if action else path


def _alias_path(name: str) -> str:
    return f"{ADMIN_ALIASES_PATH}/{quote(name, safe='')}"


def _key_path(key: str, action: str | None = None) -> str:
    path = f"{ADMIN_KEYS_PATH}/{quote(key, safe='')}"
    return f"{path}/{action}" if action else path
