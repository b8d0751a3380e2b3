"""``lora-gateway``: the operator's command line.

Sub-commands live in :mod:`gateway.commands`, one module each (``serve``, ``status``,
``chat``/``complete``, ``models``, ``adapters``, ``keys``, ``aliases``), and register themselves
on the Typer app built here. Nothing runs at import time.
"""

from __future__ import annotations

import typer


def build_cli() -> typer.Typer:
    from gateway.commands import adapters, aliases, chat, keys, models, serve, status

    cli = typer.Typer(
        name="lora-gateway",
        help="Multi-LoRA OpenAI-compatible gateway in front of vLLM.",
        no_args_is_help=True,
        add_completion=False,
    )
    serve.register(cli)
    status.register(cli)
    chat.register(cli)
    cli.add_typer(models.app, name="models", help="Prepare base models offline.")
    cli.add_typer(adapters.app, name="adapters", help="Manage adapters through the admin API.")
    cli.add_typer(keys.app, name="keys", help="Manage client keys through the admin API.")
    cli.add_typer(
        aliases.app, name="aliases", help="Manage aliases and canary splits through the admin API."
    )
    return cli


def main() -> None:
    build_cli()()
