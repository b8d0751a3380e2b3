"""``lora-gateway aliases set|list|show|delete``: a running gateway's aliases (``/admin/aliases``).

An alias is a public model name split over adapter versions by weight (a canary rollout)::

    lora-gateway aliases set legal legal-lora@3=90 legal-lora@4=10

Each target is ``ADAPTER@VERSION=WEIGHT`` (weights are whole percents summing to 100; the
gateway checks the adapters, versions and sum, and its error is printed as it is). Through the
one admin API client (:class:`adapters.client.AdminClient`), with the same token lookup and
error printing as ``lora-gateway adapters`` (:mod:`gateway.commands.adapters`). Registered on
the CLI by :func:`gateway.cli.build_cli`.
"""

from __future__ import annotations

import re
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

#: ``ADAPTER@VERSION=WEIGHT``; the adapter's own rules are the gateway's to check.
_TARGET = re.compile(r"^(?P<adapter>[^@=\s]+)@v?(?P<version>\d{1,7})=(?P<weight>\d{1,3})$")
MAX_TARGETS = 16


def parse_target(text: str) -> dict[str, Any]:
    """``legal-lora@3=90`` -> ``{"adapter": "legal-lora", "version": 3, "weight": 90}``."""
    found = _TARGET.match(text.strip())
    if found is None:
        raise typer.BadParameter(
            f"{text!r} is not ADAPTER@VERSION=WEIGHT (for example legal-lora@3=90)"
        )
    return {
        "adapter": found["adapter"],
        "version": int(found["version"]),
        "weight": int(found["weight"]),
    }


def _targets_text(alias: dict[str, Any]) -> str:
    return ", ".join(f"{t['adapter']}@{t['version']}={t['weight']}" for t in alias["targets"])


def _print_alias(alias: dict[str, Any]) -> None:
    typer.echo(f"{alias['name']}: {_targets_text(alias)} (updated {alias['updated_at']})")


@app.command("set")
def set_(
    name: str,
    targets: Annotated[
        list[str],
        typer.Argument(
            help="ADAPTER@VERSION=WEIGHT, one per version (weights in percent, summing to 100)."
        ),
    ],
    url: UrlOpt = DEFAULT_URL,
    admin_token: TokenOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Create alias NAME or replace its split; takes effect with the next request."""
    if len(targets) > MAX_TARGETS:
        raise typer.BadParameter(f"at most {MAX_TARGETS} targets", param_hint="TARGETS")
    body = [parse_target(target) for target in targets]
    with admin_client(url, admin_token, data_dir) as admin:
        _print_alias(admin.put_alias(name, body))


@app.command("list")
def list_(
    url: UrlOpt = DEFAULT_URL, admin_token: TokenOpt = None, data_dir: DataDirOpt = None
) -> None:
    """Show every alias and its split."""
    with admin_client(url, admin_token, data_dir) as admin:
        aliases = admin.list_aliases()
    print_table(
        ("alias", "targets (adapter@version=weight)", "updated"),
        ((alias["name"], _targets_text(alias), str(alias["updated_at"])) for alias in aliases),
        empty="no aliases",
    )


@app.command("show")
def show(
    name: str, url: UrlOpt = DEFAULT_URL, admin_token: TokenOpt = None, data_dir: DataDirOpt = None
) -> None:
    """Show one alias's split."""
    with admin_client(url, admin_token, data_dir) as admin:
        _print_alias(admin.get_alias(name))


@app.command("delete")
def delete(
    name: str, url: UrlOpt = DEFAULT_URL, admin_token: TokenOpt = None, data_dir: DataDirOpt = None
) -> None:
    """Delete an alias: requests for its name get 404 from then on."""
    with admin_client(url, admin_token, data_dir) as admin:
        admin.delete_alias(name)
    typer.echo(f"deleted alias {name}")
