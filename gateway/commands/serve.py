"""``lora-gateway serve``: run the gateway (and, unless ``--engine-url``, its vLLM engine).

Flags override the environment (``LORA_GATEWAY_*``) field by field; the result is one
:class:`~gateway.settings.GatewaySettings`. The app from :func:`gateway.app.create_app` owns the
engines it builds: its lifespan starts them and stops them last, which ends vLLM's whole process
tree. On SIGINT/SIGTERM uvicorn stops accepting connections, lets in-flight requests (streams
included) finish within ``settings.drain_timeout_s`` and cancels what is left, and only then
runs the lifespan's exit: drain first, engine last.

Logging: :func:`gateway.observability.access_log.configure_logging` on stderr, ``--log-format``
``json``, ``text`` or ``auto`` (text on a terminal, JSON lines otherwise), one line per request
from the access log, health polls at DEBUG; uvicorn's own logging config and access log are off,
so each request is logged once. While it runs, this command prints the engine log path, the
gateway URL, where the admin token is (never the token), the engine's start phases
(:class:`gateway.commands.progress.StartupProgress`: one live line on a terminal) and, once the
engine is ready with its adapters re-applied, a copy-paste OpenAI SDK example (which never holds
a key: it reads ``OPENAI_API_KEY``). Registered on the CLI by :func:`register` (see
:mod:`gateway.cli`).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import ValidationError

from adapters.errors import AdapterError
from gateway.commands.workers import MAX_WORKERS, run_workers
from gateway.engines.factory import build_engines
from gateway.errors import GatewayError
from gateway.gc_tuning import tune_for_serving
from gateway.observability.access_log import configure_logging
from gateway.placement.policy import PlacementPolicy
from gateway.settings import GatewaySettings, LogFormat

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI

    from gateway.auth.admin_token import AdminToken
    from gateway.engines.base import Engine

NO_KEY = "not-needed"
#: How often the start-up progress line is refreshed.
PROGRESS_INTERVAL_S = 0.25


def register(cli: typer.Typer) -> None:
    cli.command("serve", help="Run the OpenAI-compatible gateway and its vLLM engine.")(serve)


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (0: any free one) (default 8000).")] = None,
    base_model: Annotated[
        str | None,
        typer.Option(help="smollm2-135m-instruct (default), tiny, or a model directory."),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="Models, adapters, registry and logs (default ~/.local/share/lora-gateway)."
        ),
    ] = None,
    max_loras: Annotated[int | None, typer.Option(help="Adapters per batch (vLLM).")] = None,
    max_cpu_loras: Annotated[
        int | None, typer.Option(help="Adapters held loaded at once (vLLM).")
    ] = None,
    max_lora_rank: Annotated[int | None, typer.Option(help="Largest adapter rank.")] = None,
    engine_url: Annotated[
        list[str] | None,
        typer.Option(help="Use a vLLM server run elsewhere (repeatable) instead of starting one."),
    ] = None,
    engines: Annotated[
        int | None,
        typer.Option(
            help="How many vLLM engines to start on this machine, each bound to its own cores "
            "(ignored with --engine-url)."
        ),
    ] = None,
    placement: Annotated[
        PlacementPolicy | None,
        typer.Option(help="Where adapters load: affinity (default) or replicate."),
    ] = None,
    adapters_dir: Annotated[
        Path | None, typer.Option(help="Register every adapter found in this directory at start.")
    ] = None,
    api_key: Annotated[
        list[str] | None, typer.Option(help="Client API key for /v1 (repeatable); none: open.")
    ] = None,
    log_format: Annotated[
        LogFormat | None,
        typer.Option(help="json, text, or auto (default): text on a terminal, JSON otherwise."),
    ] = None,
    log_level: Annotated[
        str | None, typer.Option(help="DEBUG also logs health polls and metric scrapes.")
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            max=MAX_WORKERS,
            help="Gateway processes on the one port, sharing the engines and the registry "
            "(each a replica; the engines are started once).",
        ),
    ] = 1,
) -> None:
    overrides: dict[str, Any] = {
        "host": host,
        "port": port,
        "base_model": base_model,
        "data_dir": data_dir,
        "max_loras": max_loras,
        "max_cpu_loras": max_cpu_loras,
        "max_lora_rank": max_lora_rank,
        "engine_urls": engine_url or None,
        "engines": engines,
        "placement_policy": placement,
        "adapters_dir": adapters_dir,
        "api_keys": api_key or None,
        "log_format": log_format,
        "log_level": log_level,
    }
    try:
        settings = GatewaySettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise typer.BadParameter(_validation_message(exc)) from exc
    try:
        # Fail fast on a bad base model or engine URL, before the server starts.
        build_engines(settings)
        if workers > 1:
            configure_logging(settings.log_level, settings.log_format)
            code = asyncio.run(run_workers(settings, workers))
            if code:
                raise typer.Exit(code)
            return
        with asyncio.Runner(loop_factory=serving_loop_factory()) as runner:
            runner.run(run_gateway(settings))
    except (GatewayError, AdapterError) as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from exc


def serving_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (it comes with ``uvicorn[standard]``), else
    asyncio's own (None).

    ``uvicorn.run`` would pick uvloop by itself, but the gateway runs ``Server.serve`` inside its
    own loop (to tune the collector once started): without this the loop is asyncio's, whose
    Python-level selector and transports cost about a third of the CPU per proxied request.
    """
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _validation_message(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in exc.errors()
    )


async def run_gateway(
    settings: GatewaySettings,
    *,
    sockets: list[socket.socket] | None = None,
    announce: bool = True,
) -> None:
    """Serve until SIGINT/SIGTERM; the app's lifespan starts and stops the engines.

    ``sockets``: accept on these (a ``--workers`` worker: the parent bound them) instead of
    binding ``settings.host:port``; ``announce``: print the URL, the admin token's place and
    the SDK example (one worker does).
    """
    import uvicorn

    from gateway.app import create_app

    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            # Our handler (configure_logging) formats uvicorn's records too; the gateway's
            # access log is the one line per request.
            log_config=None,
            log_level=settings.log_level.lower(),
            access_log=False,
            # uvicorn waits this long for in-flight requests before the lifespan stops engines.
            timeout_graceful_shutdown=settings.drain_timeout_s,  # type: ignore[arg-type]
        )
    )
    helpers = [asyncio.create_task(_tune_gc_once_started(server))]
    if announce:
        helpers.append(asyncio.create_task(_announce(server, app, settings)))
    try:
        await server.serve(sockets=sockets)
    finally:
        for helper in helpers:
            helper.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)


async def _tune_gc_once_started(server: uvicorn.Server) -> None:
    """Freeze the start-up objects once the lifespan has built them (:mod:`gateway.gc_tuning`)."""
    while not server.started:  # noqa: ASYNC110 (uvicorn exposes a flag, not an event)
        await asyncio.sleep(0.05)
    tune_for_serving()


async def _announce(server: uvicorn.Server, app: FastAPI, settings: GatewaySettings) -> None:
    from rich.console import Console

    from gateway.commands.progress import StartupProgress

    while not server.started:  # noqa: ASYNC110 (uvicorn exposes a flag, not an event)
        await asyncio.sleep(0.05)
    engines: list[Engine] = app.state.services.engines
    for engine in engines:
        log_path = getattr(engine, "log_path", None)
        typer.echo(f"engine {engine.name}: " + (f"log: {log_path}" if log_path else engine.url))
    url = gateway_url(server, settings)
    typer.echo(f"gateway: {url}  (GET /readyz answers 200 once the engine is ready)")
    typer.echo(admin_token_note(app))
    progress = StartupProgress(engines, Console())
    shown: set[str] = set()  # the example once per base model, not after every restart
    try:
        while True:
            for engine in progress.update():
                if engine.base_model not in shown:
                    shown.add(engine.base_model)
                    keys_required = bool(settings.api_keys)
                    typer.echo(sdk_example(url, engine.base_model, keys_required=keys_required))
            await asyncio.sleep(PROGRESS_INTERVAL_S)
    finally:
        progress.close()


def admin_token_note(app: FastAPI) -> str:
    """Where the admin API's bearer token is; never the token itself."""
    token: AdminToken = app.state.admin_token
    if token.path is None:
        return "admin API: /admin, bearer token from LORA_GATEWAY_ADMIN_TOKEN"
    return f"admin API: /admin, bearer token in {token.path} (mode 0600)"


def gateway_url(server: uvicorn.Server, settings: GatewaySettings) -> str:
    """The URL clients use: the bound port (also when --port 0) on a reachable host name."""
    port = settings.port
    for listener in getattr(server, "servers", []):
        for sock in listener.sockets:
            port = sock.getsockname()[1]
            break
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def sdk_example(url: str, model: str, *, keys_required: bool) -> str:
    """A copy-paste OpenAI SDK example; with client keys it reads one from OPENAI_API_KEY (the
    SDK's own variable), so no key ever lands in a terminal's scrollback or a CI log.

    It asks for greedy decoding: with SmolLM2-135M's model-card sampling (temperature 0.2,
    top_p 0.9), about one answer in six to "What is the capital of France?" wanders off into
    French (measured with HF transformers), and a first try should answer as printed."""
    if keys_required:
        setup = "export OPENAI_API_KEY=<one of the gateway's API keys>, then:\n\n"
        client = f'client = OpenAI(base_url="{url}/v1")  # the key from OPENAI_API_KEY\n'
    else:
        setup = ""
        client = f'client = OpenAI(base_url="{url}/v1", api_key="{NO_KEY}")\n'
    return (
        "\nReady. Try it with the OpenAI SDK:\n\n"
        + setup
        + "from openai import OpenAI\n"
        + client
        + "reply = client.chat.completions.create(\n"
        f'    model="{model}",\n'
        '    messages=[{"role": "user", "content": "What is the capital of France?"}],\n'
        "    temperature=0,  # greedy; left out, the model card's sampling applies\n"
        ")\n"
        "print(reply.choices[0].message.content)\n"
    )
