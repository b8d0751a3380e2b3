"""``lora-gateway models``: prepare the offline base models (see :mod:`gateway.engines.basemodels`).

``lora-gateway models prepare NAME [--out DIR]`` builds ``tiny`` or converts
``smollm2-135m-instruct`` once into DIR (default: the data dir's ``models/NAME``, where ``serve``
looks); a complete build is not redone. Added to the CLI by :mod:`gateway.cli`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from gateway.engines.basemodels import PREPARERS, BaseModelError, is_complete
from gateway.settings import GatewaySettings

app = typer.Typer(no_args_is_help=True, add_completion=False)


@app.command("prepare")
def prepare(
    name: Annotated[str, typer.Argument(help=f"One of: {', '.join(PREPARERS)}.")],
    out: Annotated[
        Path | None, typer.Option(help="Model directory to write (default DATA_DIR/models/NAME).")
    ] = None,
) -> None:
    """Build or convert a base model into a directory that vLLM, transformers and PEFT load."""
    if name not in PREPARERS:
        raise typer.BadParameter(
            f"unknown model {name!r}; choose one of {', '.join(PREPARERS)}", param_hint="NAME"
        )
    target = out if out is not None else GatewaySettings().models_dir / name
    if is_complete(target, name):
        typer.echo(f"{name}: already prepared in {target}")
        return
    typer.echo(f"{name}: preparing into {target} ...")
    started = time.monotonic()
    try:
        path = PREPARERS[name](target)
    except BaseModelError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"{name}: ready in {path} ({time.monotonic() - started:.1f} s)")
