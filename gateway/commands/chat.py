"""``lora-gateway chat MODEL`` and ``lora-gateway complete MODEL``: try a model at once.

A small session against a running gateway with the official OpenAI SDK, in the spirit of
``vllm chat``: each line read from stdin is one turn (chat keeps the history, ``--system`` sets
a system message) or one prompt (complete); the answer streams to stdout as it arrives. On a
terminal a prompt is shown; piped, only the answers are printed, so it scripts and tests
easily. ``/reset`` forgets the chat history, ``/exit`` (or end of input) ends the session.

URL and key: ``--url`` / ``LORA_GATEWAY_URL`` as for the other commands; ``--api-key`` /
``LORA_GATEWAY_API_KEY``, else ``OPENAI_API_KEY``, else the first of the gateway's own
``LORA_GATEWAY_API_KEYS``. Registered on the CLI by :func:`register` (see :mod:`gateway.cli`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gateway.commands.adapters import DEFAULT_URL, UrlOpt

if TYPE_CHECKING:
    from openai import OpenAI
    from openai.types.chat import ChatCompletionMessageParam

NO_KEY = "not-needed"
TIMEOUT_S = 300.0
#: Bounds on what a session sends: one line, the history kept, the answer's length.
MAX_LINE_CHARS = 32_000
MAX_HISTORY_MESSAGES = 100
MAX_TOKENS_LIMIT = 32_768
EXIT_COMMANDS = frozenset({"/exit", "/quit"})

KeyOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="LORA_GATEWAY_API_KEY",
        show_envvar=True,
        help="Client key; default: OPENAI_API_KEY, else the first of LORA_GATEWAY_API_KEYS.",
    ),
]
TemperatureOpt = Annotated[float, typer.Option(min=0.0, max=2.0, help="Sampling temperature.")]
MaxTokensOpt = Annotated[
    int, typer.Option(min=1, max=MAX_TOKENS_LIMIT, help="Longest answer, in tokens.")
]


def register(cli: typer.Typer) -> None:
    cli.command("chat", help="Chat with MODEL (an adapter or the base) through the gateway.")(chat)
    cli.command("complete", help="Complete each input line with MODEL through the gateway.")(
        complete
    )


def chat(
    model: Annotated[str, typer.Argument(help="An adapter name or the base model's id.")],
    system: Annotated[str | None, typer.Option(help="A system message to start with.")] = None,
    temperature: TemperatureOpt = 0.7,
    max_tokens: MaxTokensOpt = 256,
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
) -> None:
    client = _client(url, api_key)
    start: list[ChatCompletionMessageParam] = (
        [{"role": "system", "content": system}] if system else []
    )
    history = list(start)
    failures = 0
    for line in _lines(f"{model}> "):
        if line == "/reset":
            history = list(start)
            continue
        history.append({"role": "user", "content": line})
        del history[len(start) : max(len(start), len(history) - MAX_HISTORY_MESSAGES)]
        stream = _request(
            client.chat.completions.create,
            model=model,
            messages=history,
            temperature=temperature,
            max_tokens=max_tokens,
            stream=True,
        )
        answer = _print_stream(
            (choice.delta.content or "" for chunk in stream for choice in chunk.choices)
            if stream is not None
            else None
        )
        if answer is None:
            failures += 1
            history.pop()  # the turn that failed is not part of the conversation
        else:
            history.append({"role": "assistant", "content": answer})
    raise typer.Exit(1 if failures else 0)


def complete(
    model: Annotated[str, typer.Argument(help="An adapter name or the base model's id.")],
    temperature: TemperatureOpt = 0.7,
    max_tokens: MaxTokensOpt = 128,
    url: UrlOpt = DEFAULT_URL,
    api_key: KeyOpt = None,
) -> None:
    client = _client(url, api_key)
    failures = 0
    for line in _lines("prompt> "):
        stream = _request(
            client.completions.create,
            model=model,
            prompt=line,
            temperature=temperature,
            max_tokens=max_tokens,
            stream=True,
        )
        answer = _print_stream(
            (choice.text for chunk in stream for choice in chunk.choices)
            if stream is not None
            else None
        )
        failures += answer is None
    raise typer.Exit(1 if failures else 0)


def _client(url: str, api_key: str | None) -> OpenAI:
    from openai import OpenAI

    return OpenAI(
        base_url=f"{url.rstrip('/')}/v1",
        api_key=_resolve_key(api_key),
        timeout=TIMEOUT_S,
        max_retries=0,
    )


def _resolve_key(api_key: str | None) -> str:
    if api_key:
        return api_key
    if os.environ.get("OPENAI_API_KEY"):
        return os.environ["OPENAI_API_KEY"]
    from gateway.settings import GatewaySettings

    keys = GatewaySettings().api_keys
    return keys[0].get_secret_value() if keys else NO_KEY


def _lines(prompt: str) -> Iterator[str]:
    """Non-empty input lines, until end of input or /exit; a prompt only on a terminal."""
    interactive = sys.stdin.isatty()
    while True:
        try:
            line = input(prompt) if interactive else sys.stdin.readline()
        except (EOFError, KeyboardInterrupt):
            return
        if not interactive and not line:
            return
        line = line.strip()
        if line in EXIT_COMMANDS:
            return
        if len(line) > MAX_LINE_CHARS:
            typer.echo(f"error: a line is limited to {MAX_LINE_CHARS} characters", err=True)
            continue
        if line:
            yield line


def _request(create: Callable[..., Any], **params: Any) -> Any:
    """``create(**params)``; on an error print it and return None (a lost connection ends it)."""
    import openai

    try:
        return create(**params)
    except openai.APIConnectionError as exc:
        typer.echo(f"error: cannot reach the gateway: {exc}", err=True)
        raise typer.Exit(1) from exc
    except openai.APIError as exc:
        _print_error(exc)
        return None


def _print_stream(parts: Iterable[str] | None) -> str | None:
    """Print the answer as it streams; the whole answer, or None if it failed."""
    import openai

    if parts is None:
        return None
    pieces: list[str] = []
    try:
        for part in parts:
            pieces.append(part)
            sys.stdout.write(part)
            sys.stdout.flush()
    except openai.APIError as exc:  # an error event in the stream
        sys.stdout.write("\n")
        _print_error(exc)
        return None
    sys.stdout.write("\n")
    sys.stdout.flush()
    return "".join(pieces)


def _print_error(exc: Exception) -> None:
    body = getattr(exc, "body", None)
    message = body.get("message") if isinstance(body, dict) else None
    status = getattr(exc, "status_code", None)
    where = f" (HTTP {status})" if status else ""
    typer.echo(f"error: {message or exc}{where}", err=True)
