"""``lora-gateway status``: a running gateway on one screen, from ``GET /admin/status``.

Engines (state, restarts, adapter slots used, pid, reason), adapters (state, version, engines,
requests in flight) and the gateway's requests in flight. URL and admin token come from the same
options, environment and token file as ``lora-gateway adapters`` (:mod:`gateway.commands.adapters`,
whose admin client set-up it shares: :class:`adapters.client.AdminClient`). Registered on the CLI
by :func:`gateway.cli.build_cli`.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from gateway.commands.adapters import DEFAULT_URL, DataDirOpt, TokenOpt, UrlOpt, admin_client

#: Width of the tables when the output is not a terminal.
STATUS_WIDTH = 200


def register(cli: typer.Typer) -> None:
    cli.command("status", help="Engines, adapter slots, adapters and requests in flight.")(status)


def status(
    url: UrlOpt = DEFAULT_URL,
    admin_token: TokenOpt = None,
    data_dir: DataDirOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON answer.")] = False,
) -> None:
    with admin_client(url, admin_token, data_dir) as client:
        answer = client.status()
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
        return
    console = Console(highlight=False)
    if not console.is_terminal:  # piped: wide rows, not 80-column wraps
        console = Console(highlight=False, width=STATUS_WIDTH)
    render_status(answer, url, console)


def render_status(answer: dict[str, Any], url: str, console: Console) -> None:
    engines: list[dict[str, Any]] = answer["engines"]
    adapters: list[dict[str, Any]] = answer["adapters"]
    loaded = sum(1 for adapter in adapters if adapter["state"] == "loaded")
    console.print(
        f"gateway {url}: {'ready' if answer['ready'] else 'NOT READY'}, "
        f"{answer['in_flight']} request(s) in flight, "
        f"{loaded} of {len(adapters)} adapter(s) loaded",
        markup=False,
        soft_wrap=True,
    )
    table = Table("engine", "state", "restarts", "slots used", "model", "pid", "reason")
    for engine in engines:
        _add_row(
            table,
            engine["name"],
            engine["state"],
            str(engine["restarts"]),
            f"{engine['slots_used']}/{engine['slots_total']}",
            engine["base_model"],
            str(engine["pid"] or ""),
            engine["reason"],
        )
    console.print(table)
    if not adapters:
        console.print("no adapters registered", markup=False)
        return
    table = Table("adapter", "version", "state", "pinned", "in flight", "engines", "last error")
    for adapter in adapters:
        _add_row(
            table,
            adapter["name"],
            str(adapter["version"]),
            adapter["state"],
            "yes" if adapter["pinned"] else "",
            str(adapter["in_flight"]),
            ", ".join(adapter["engines"]),
            (adapter.get("last_error") or "")[:80],
        )
    console.print(table)


def _add_row(table: Table, *cells: str) -> None:
    # Text, not markup: a reason such as "[Errno 111] ..." must print as it is.
    table.add_row(*(Text(cell) for cell in cells))
