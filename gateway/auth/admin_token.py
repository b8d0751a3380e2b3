"""The admin API's bearer token: from the settings, or generated once into the data dir.

``LORA_GATEWAY_ADMIN_TOKEN`` wins. Without it, the first start writes a random token to
``DATA_DIR/admin_token`` with mode 0600 (created exclusively, so two starting gateways agree on
one token) and logs where it is; later starts read it back. The token itself is never logged.
Comparison is constant-time (:func:`hmac.compare_digest`).

Used by :func:`gateway.app.create_app` (kept on ``app.state.admin_token`` for
:mod:`gateway.api.admin.adapters`) and by ``lora-gateway adapters`` to find the token locally.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from gateway.errors import GatewayError
from gateway.settings import GatewaySettings

logger = logging.getLogger(__name__)

TOKEN_FILE = "admin_token"
_TOKEN_BYTES = 32
_MAX_TOKEN_FILE_BYTES = 4096


def token_path(data_dir: Path) -> Path:
    return data_dir.expanduser() / TOKEN_FILE


@dataclass(frozen=True, slots=True)
class AdminToken:
    value: SecretStr
    #: The file it lives in; None when it came from the settings.
    path: Path | None

    def verify(self, presented: str) -> bool:
        return hmac.compare_digest(presented.encode(), self.value.get_secret_value().encode())


def read_token_file(data_dir: Path) -> str | None:
    """The stored token, or None when there is none (yet)."""
    path = token_path(data_dir)
    try:
        with path.open("rb") as handle:
            token = handle.read(_MAX_TOKEN_FILE_BYTES).decode().strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise GatewayError(
            f"cannot read the admin token file {path}: {exc}", code="admin_token_unreadable"
        ) from exc
    return token or None


def load_admin_token(settings: GatewaySettings) -> AdminToken:
    """The admin token for this gateway, generating and storing one on first start."""
    if settings.admin_token is not None and settings.admin_token.get_secret_value():
        return AdminToken(value=settings.admin_token, path=None)
    path = token_path(settings.data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = read_token_file(settings.data_dir)
    if token is None:
        token = secrets.token_urlsafe(_TOKEN_BYTES)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process won the race: use its token
            token = read_token_file(settings.data_dir)
            if token is None:
                raise GatewayError(
                    f"the admin token file {path} is empty; delete it and restart",
                    code="admin_token_unreadable",
                ) from None
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(token + "\n")
            logger.warning("generated an admin token; it is stored in %s (mode 0600)", path)
            return AdminToken(value=SecretStr(token), path=path)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        path.chmod(0o600)
        logger.warning(
            "admin token file %s was readable by others (mode %o); set to 0600", path, mode
        )
    logger.info("admin token read from %s", path)
    return AdminToken(value=SecretStr(token), path=path)
