"""``lora-gateway adapters ...``: manage a running gateway's adapters through its admin API.

Talks HTTP to ``/admin`` (:mod:`gateway.api.admin.adapters`) with the admin token from
``--admin-token``, else ``LORA_GATEWAY_ADMIN_TOKEN``, else the token file in the data dir
(:mod:`gateway.auth.admin_token`). Errors are printed from the OpenAI error body and exit 1.
Registered on the CLI by :func:`gateway.cli.build_cli`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(no_args_is_help=True, add_completion=False)

DEFAULT_URL = "http://127.0.0.1:8000"
TIMEOUT_S = 300.0  # a load waits for the engine; a register hashes the weights

UrlOpt = Annotated[
    str, typer.Option("--url", envvar="LORA_GATEWAY_URL", help="Base URL of the gateway.")
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--admin-token",
        envvar="LORA_GATEWAY_ADMIN_TOKEN",
        show_envvar=True,
        help="Admin token; default: the admin_token file in the data dir.",
    ),
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Gateway data dir holding admin_token (default: the settings')."
    ),
]


def _fail(message: str) -> NoReturn:
    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code=1)


def _token(token: str | None, data_dir: Path | None) -> str:
    if token:
        return token
    from gateway.auth.admin_token import read_token_file, token_path
    from gateway.settings import GatewaySettings

    directory = data_dir or GatewaySettings().data_dir
    stored = read_token_file(directory)
    if stored is None:
        _fail(
            f"no admin token: pass --admin-token, set LORA_GATEWAY_ADMIN_TOKEN, or run on "
            f"the gateway's machine (looked for {token_path(directory)})"
        )
    return stored


def _call(
    method: str,
    url: str,
    path: str,
    token: str | None,
    data_dir: Path | None,
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {_token(token, data_dir)}"}
    try:
        with httpx.Client(base_url=url, timeout=TIMEOUT_S, headers=headers) as client:
            response = client.request(method, path, json=body)
    except httpx.HTTPError as exc:
        _fail(f"cannot reach the gateway at {url}: {exc}")
    try:
        payload = response.json()
    except json.JSONDecodeError:
        payload = None
    if response.status_code >= 400:
        error = payload.get("error") if isinstance(payload, dict) else None
        if isinstance(error, dict):
            code = f", {error.get('code')}" if error.get("code") else ""
            _fail(f"{error.get('message')} (HTTP {response.status_code}{code})")
        _fail(f"HTTP {response.status_code}: {response.text[:500]}")
    if not isinstance(payload, dict):
        _fail(f"unexpected answer from {url}{path}: {response.text[:500]}")
    return payload


def _summary(adapter: dict[str, Any]) -> str:
    return f"{adapter['name']} v{adapter['active_version']} {adapter['state']}" + (
        " (pinned)" if adapter.get("pinned") else ""
    )


@app.command("add")
def add(
    name: str,
    path: Annotated[Path, typer.Argument(help="The PEFT adapter directory.")],
    pinned: Annotated[bool, typer.Option(help="Keep it loaded; never evicted.")] = False,
    load: Annotated[bool, typer.Option(help="Load it now.")] = False,
    new_version: Annotated[
        bool,
        typer.Option(help="Register changed content under an existing name as its next version."),
    ] = False,
    url: UrlOpt = DEFAULT_URL,
    admin_token: TokenOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Register an adapter directory under NAME (its path as the gateway sees it)."""
    body = {
        "name": name,
        "path": str(path.expanduser().resolve()),
        "load": load,
        "new_version": new_version,
        **({"pinned": True} if pinned else {}),
    }
    adapter = _call("POST", url, "/admin/adapters", admin_token, data_dir, body)
    typer.echo(f"registered {_summary(adapter)}")


@app.command("list")
def list_(
    url: UrlOpt = DEFAULT_URL, admin_token: TokenOpt = None, data_dir: DataDirOpt = None
) -> None:
    """Show every registered adapter."""
    adapters = _call("GET", url, "/admin/adapters", admin_token, data_dir)["data"]
    table = Table("name", "version", "state", "pinned", "in flight", "engines", "last error")
    for adapter in adapters:
        table.add_row(
            adapter["name"],
            str(adapter["active_version"]),
            adapter["state"],
            "yes" if adapter["pinned"] else "",
            str(adapter["in_flight"]),
            ", ".join(adapter["engines"]),
            (adapter.get("last_error") or "")[:80],
        )
    Console().print(table)
    if not adapters:
        typer.echo("no adapters registered")


@app.command("show")
def show(
    name: str, url: UrlOpt = DEFAULT_URL, admin_token: TokenOpt = None, data_dir: DataDirOpt = None
) -> None:
    """Show one adapter with all its versions."""
    adapter = _call("GET", url, f"/admin/adapters/{name}", admin_token, data_dir)
    typer.echo(_summary(adapter))
    table = Table("version", "active", "state", "rank", "sha256", "path")
    for version in adapter["versions"]:
        table.add_row(
            str(version["version"]),
            "*" if version["active"] else "",
            version["state"],
            str(version["rank"]),
            version["sha256"][:12],
            version["source_path"],
        )
    Console().print(table)


@app.command("rm")
def rm(
    name: str, url: UrlOpt = DEFAULT_URL, admin_token: TokenOpt = None, data_dir: DataDirOpt = None
) -> None:
    """Unload and forget an adapter (its files stay where they are)."""
    _call("DELETE", url, f"/admin/adapters/{name}", admin_token, data_dir)
    typer.echo(f"removed {name}")


@app.command("load")
def load(
    name: str, url: UrlOpt = DEFAULT_URL, admin_token: TokenOpt = None, data_dir: DataDirOpt = None
) -> None:
    """Load an adapter now (and retry one whose load failed)."""
    typer.echo(_summary(_call("POST", url, f"/admin/adapters/{name}/load", admin_token, data_dir)))


@app.command("unload")
def unload(
    name: str, url: UrlOpt = DEFAULT_URL, admin_token: TokenOpt = None, data_dir: DataDirOpt = None
) -> None:
    """Unload an adapter once its requests in flight finish."""
    typer.echo(
        _summary(_call("POST", url, f"/admin/adapters/{name}/unload", admin_token, data_dir))
    )


@app.command("restore")
def restore(
    name: str,
    version: int,
    url: UrlOpt = DEFAULT_URL,
    admin_token: TokenOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Make an earlier VERSION of NAME active again."""
    typer.echo(
        _summary(
            _call(
                "POST",
                url,
                f"/admin/adapters/{name}/restore",
                admin_token,
                data_dir,
                {"version": version},
            )
        )
    )
