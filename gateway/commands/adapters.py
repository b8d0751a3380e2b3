"""``lora-gateway adapters ...``: manage a running gateway's adapters through its admin API.

Talks to ``/admin`` (:mod:`gateway.api.admin.adapters`) through the one admin API client,
:class:`adapters.client.AdminClient`, with the admin token from ``--admin-token``, else
``LORA_GATEWAY_ADMIN_TOKEN``, else the token file in the data dir
(:mod:`gateway.auth.admin_token`). Errors are printed from the OpenAI error body and exit 1.
Registered on the CLI by :func:`gateway.cli.build_cli`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from adapters.client import AdminClient
from adapters.errors import AdapterError

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


@contextmanager
def admin_client(url: str, token: str | None, data_dir: Path | None) -> Iterator[AdminClient]:
    """An admin API client; any failure of the call becomes one red line and exit status 1."""
    try:
        with AdminClient(url, _token(token, data_dir), timeout_s=TIMEOUT_S) as client:
            yield client
    except AdapterError as exc:
        _fail(str(exc))


def print_table(
    columns: Sequence[str], rows: Iterable[Sequence[str]], *, empty: str | None = None
) -> None:
    """``rows`` under ``columns`` as a rich table (the terminal's width; 200 columns into a
    pipe, so ids and limits stay whole); ``empty`` is said under it when there were no rows."""
    table = Table(*columns)
    count = 0
    for row in rows:
        table.add_row(*row)
        count += 1
    console = Console()
    (console if console.is_terminal else Console(width=200)).print(table)
    if not count and empty is not None:
        typer.echo(empty)


def _summary(adapter: dict[str, Any]) -> str:
    return f"{adapter['name']} v{adapter['active_version']} {adapter['state']}" + (
        " (pinned)" if adapter.get("pinned") else ""
    )


def _fetch_summary(fetch: dict[str, Any]) -> str:
    """One line for an ``adapter.fetch`` object: fetching (bytes) or failed (why)."""
    where = f"{fetch['name']} from {fetch['source']}"
    if fetch["state"] == "failed":
        return f"fetching {where} failed: {(fetch.get('error') or {}).get('message')}"
    return f"fetching {where} ({fetch['bytes_done']} of {fetch['bytes_total'] or '?'} bytes)"


@app.command("add")
def add(
    name: str,
    path: Annotated[
        str,
        typer.Argument(
            help="The PEFT adapter directory, or a remote source: s3://BUCKET/PREFIX, "
            "hf://ORG/NAME[@REVISION] (fetched by the gateway)."
        ),
    ],
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
    """Register an adapter under NAME: a directory (its path as the gateway sees it), or a
    remote source the gateway fetches (waits for the fetch, within the gateway's bound)."""
    options: dict[str, Any] = {
        "pinned": True if pinned else None,
        "load": load,
        "new_version": new_version,
    }
    with admin_client(url, admin_token, data_dir) as admin:
        if "://" in path and not path.startswith("file://"):
            adapter = admin.register_source(name, path, **options)
        else:
            adapter = admin.register(name, Path(path.removeprefix("file://")), **options)
    if adapter.get("object") == "adapter.fetch":
        typer.echo(f"{_fetch_summary(adapter)}; `lora-gateway adapters show {name}` follows it")
        return
    typer.echo(f"registered {_summary(adapter)}")


@app.command("list")
def list_(
    url: UrlOpt = DEFAULT_URL, admin_token: TokenOpt = None, data_dir: DataDirOpt = None
) -> None:
    """Show every registered adapter."""
    with admin_client(url, admin_token, data_dir) as admin:
        adapters = admin.list()
        fetches = admin.fetches()
    print_table(
        ("name", "version", "state", "pinned", "in flight", "engines", "last error"),
        (
            (
                adapter["name"],
                str(adapter["active_version"]),
                adapter["state"],
                "yes" if adapter["pinned"] else "",
                str(adapter["in_flight"]),
                ", ".join(adapter["engines"]),
                (adapter.get("last_error") or "")[:80],
            )
            for adapter in adapters
        ),
        empty="no adapters registered",
    )
    for fetch in fetches:
        typer.echo(_fetch_summary(fetch))


@app.command("show")
def show(
    name: str, url: UrlOpt = DEFAULT_URL, admin_token: TokenOpt = None, data_dir: DataDirOpt = None
) -> None:
    """Show one adapter with all its versions."""
    with admin_client(url, admin_token, data_dir) as admin:
        adapter = admin.get(name)
    if adapter.get("object") == "adapter.fetch":
        typer.echo(_fetch_summary(adapter))
        return
    typer.echo(_summary(adapter))
    if adapter.get("fetch"):
        typer.echo(_fetch_summary(adapter["fetch"]))
    print_table(
        ("version", "active", "state", "rank", "sha256", "path"),
        (
            (
                str(version["version"]),
                "*" if version["active"] else "",
                version["state"],
                str(version["rank"]),
                version["sha256"][:12],
                version["source_path"],
            )
            for version in adapter["versions"]
        ),
    )


@app.command("rm")
def rm(
    name: str, url: UrlOpt = DEFAULT_URL, admin_token: TokenOpt = None, data_dir: DataDirOpt = None
) -> None:
    """Unload and forget an adapter (its files stay where they are)."""
    with admin_client(url, admin_token, data_dir) as admin:
        admin.delete(name)
    typer.echo(f"removed {name}")


@app.command("load")
def load(
    name: str, url: UrlOpt = DEFAULT_URL, admin_token: TokenOpt = None, data_dir: DataDirOpt = None
) -> None:
    """Load an adapter now (and retry one whose load failed)."""
    with admin_client(url, admin_token, data_dir) as admin:
        typer.echo(_summary(admin.load(name)))


@app.command("unload")
def unload(
    name: str, url: UrlOpt = DEFAULT_URL, admin_token: TokenOpt = None, data_dir: DataDirOpt = None
) -> None:
    """Unload an adapter once its requests in flight finish."""
    with admin_client(url, admin_token, data_dir) as admin:
        typer.echo(_summary(admin.unload(name)))


@app.command("restore")
def restore(
    name: str,
    version: int,
    url: UrlOpt = DEFAULT_URL,
    admin_token: TokenOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Make an earlier VERSION of NAME active again."""
    with admin_client(url, admin_token, data_dir) as admin:
        typer.echo(_summary(admin.restore(name, version)))
