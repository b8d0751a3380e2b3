"""``lora-gateway keys ...``: manage a running gateway's virtual client keys (``/admin/keys``).

Through the one admin API client (:class:`adapters.client.AdminClient`), with the same token
lookup and error printing as ``lora-gateway adapters`` (:mod:`gateway.commands.adapters`).
``create`` and ``rotate`` print the secret: the only time it is shown. Registered on the CLI by
:func:`gateway.cli.build_cli`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer

from gateway.commands.adapters import (
    DEFAULT_URL,
    DataDirOpt,
    TokenOpt,
    UrlOpt,
    admin_client,
    print_table,
)

app = typer.Typer(no_args_is_help=True, add_completion=False)


class LimitName(StrEnum):
    RPM = "rpm"
    TPM = "tpm"
    MAX_CONCURRENT = "max_concurrent"
    DAILY_TOKENS = "daily_tokens"
    MONTHLY_TOKENS = "monthly_tokens"


ModelsOpt = Annotated[
    list[str] | None,
    typer.Option("--model", "-m", help="A model id or glob (legal-*) the key may use; repeat."),
]
RpmOpt = Annotated[int | None, typer.Option(help="Requests per minute.")]
TpmOpt = Annotated[int | None, typer.Option(help="Tokens per minute.")]
ConcurrentOpt = Annotated[int | None, typer.Option(help="Requests running at once.")]
DailyOpt = Annotated[int | None, typer.Option(help="Token budget per UTC day.")]
MonthlyOpt = Annotated[int | None, typer.Option(help="Token budget per UTC month.")]
ExpiresOpt = Annotated[
    str | None, typer.Option(help="Expiry, ISO 8601 with a zone (2027-01-31T00:00:00Z).")
]


def _limits(
    rpm: int | None,
    tpm: int | None,
    max_concurrent: int | None,
    daily_tokens: int | None,
    monthly_tokens: int | None,
) -> dict[str, int]:
    given = {
        "rpm": rpm,
        "tpm": tpm,
        "max_concurrent": max_concurrent,
        "daily_tokens": daily_tokens,
        "monthly_tokens": monthly_tokens,
    }
    return {name: value for name, value in given.items() if value is not None}


def _limits_text(limits: dict[str, Any]) -> str:
    return ", ".join(f"{name}={value}" for name, value in limits.items() if value is not None)


def _print_secret(key: dict[str, Any], verb: str) -> None:
    typer.echo(f"{verb} key {key['name']} ({key['id']})")
    typer.echo(f"secret: {key['secret']}")
    typer.echo("Store it now: the gateway keeps only its hash and will not show it again.")


def _print_key(key: dict[str, Any]) -> None:
    typer.echo(
        f"{key['name']} ({key['id']}, {key['prefix']}...) {key['status']}\n"
        f"  models: {', '.join(key['models'])}\n"
        f"  limits: {_limits_text(key['limits']) or 'none'}\n"
        f"  expires: {key['expires_at'] or 'never'}"
    )


@app.command("create")
def create(
    name: str,
    model: ModelsOpt = None,
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    max_concurrent: ConcurrentOpt = None,
    daily_tokens: DailyOpt = None,
    monthly_tokens: MonthlyOpt = None,
    expires_at: ExpiresOpt = None,
    url: UrlOpt = DEFAULT_URL,
    admin_token: TokenOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Create a key NAME; prints its secret once."""
    body: dict[str, Any] = {
        "name": name,
        "limits": _limits(rpm, tpm, max_concurrent, daily_tokens, monthly_tokens),
    }
    if model:
        body["models"] = model
    if expires_at:
        body["expires_at"] = expires_at
    with admin_client(url, admin_token, data_dir) as admin:
        _print_secret(admin.create_key(body), "created")


@app.command("list")
def list_(
    url: UrlOpt = DEFAULT_URL, admin_token: TokenOpt = None, data_dir: DataDirOpt = None
) -> None:
    """Show every key (never a secret)."""
    with admin_client(url, admin_token, data_dir) as admin:
        keys = admin.list_keys()
    print_table(
        ("name", "id", "prefix", "status", "models", "limits", "expires"),
        (
            (
                key["name"],
                key["id"],
                key["prefix"],
                key["status"],
                ", ".join(key["models"]),
                _limits_text(key["limits"]),
                key["expires_at"] or "",
            )
            for key in keys
        ),
        empty="no keys",
    )


@app.command("show")
def show(
    key: str, url: UrlOpt = DEFAULT_URL, admin_token: TokenOpt = None, data_dir: DataDirOpt = None
) -> None:
    """Show one key, by id or name."""
    with admin_client(url, admin_token, data_dir) as admin:
        _print_key(admin.get_key(key))


@app.command("update")
def update(
    key: str,
    name: Annotated[str | None, typer.Option(help="A new name.")] = None,
    model: ModelsOpt = None,
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    max_concurrent: ConcurrentOpt = None,
    daily_tokens: DailyOpt = None,
    monthly_tokens: MonthlyOpt = None,
    clear: Annotated[
        list[LimitName] | None, typer.Option(help="Remove this limit; repeat.")
    ] = None,
    expires_at: ExpiresOpt = None,
    no_expiry: Annotated[bool, typer.Option(help="Remove the expiry.")] = False,
    url: UrlOpt = DEFAULT_URL,
    admin_token: TokenOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Change a key's name, models, limits or expiry; what is not given stays."""
    body: dict[str, Any] = {}
    limits: dict[str, int | None] = {
        **_limits(rpm, tpm, max_concurrent, daily_tokens, monthly_tokens)
    }
    for limit in clear or []:
        limits[limit.value] = None
    if limits:
        body["limits"] = limits
    if name:
        body["name"] = name
    if model:
        body["models"] = model
    if expires_at:
        body["expires_at"] = expires_at
    elif no_expiry:
        body["expires_at"] = None
    with admin_client(url, admin_token, data_dir) as admin:
        _print_key(admin.update_key(key, body))


@app.command("revoke")
def revoke(
    key: str, url: UrlOpt = DEFAULT_URL, admin_token: TokenOpt = None, data_dir: DataDirOpt = None
) -> None:
    """Refuse a key from now on (every replica within a second or two)."""
    with admin_client(url, admin_token, data_dir) as admin:
        _print_key(admin.revoke_key(key))


@app.command("rotate")
def rotate(
    key: str, url: UrlOpt = DEFAULT_URL, admin_token: TokenOpt = None, data_dir: DataDirOpt = None
) -> None:
    """Give a key a new secret (printed once); the old secret stops working."""
    with admin_client(url, admin_token, data_dir) as admin:
        _print_secret(admin.rotate_key(key), "rotated")
