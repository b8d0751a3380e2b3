"""Ask one legal question to the base model and to ``legal-lora`` through the gateway.

    python examples/legal/ask.py                       # a gateway already runs (make serve)
    python examples/legal/ask.py --serve               # start one, ask, stop it (make demo)

Registers the adapter trained by ``make demo`` (default: DATA_DIR/adapters/legal-lora) with the
gateway's admin API (again: a retrained adapter becomes a new version), then sends the same
chat request with the official ``openai`` SDK to the base model and to ``model="legal-lora"``
and prints both answers. The admin token comes from ``--admin-token``,
``LORA_GATEWAY_ADMIN_TOKEN`` or the token file the gateway writes into its data dir.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from openai import OpenAI

from adapters.client import AdminClient
from adapters.contract import ADAPTER_CONFIG
from adapters.errors import AdapterError
from gateway.auth.admin_token import read_token_file
from gateway.settings import GatewaySettings

QUESTION = "Can my landlord raise the rent in the middle of my lease?"
READY_TIMEOUT_S = 600.0


def main(argv: list[str] | None = None) -> int:
    settings = GatewaySettings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="gateway base URL")
    parser.add_argument("--serve", action="store_true", help="start a gateway for the demo")
    parser.add_argument("--name", default="legal-lora")
    parser.add_argument(
        "--adapter", type=Path, default=settings.managed_adapters_dir / "legal-lora"
    )
    parser.add_argument("--admin-token", default=os.environ.get("LORA_GATEWAY_ADMIN_TOKEN"))
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "not-needed"))
    parser.add_argument("--question", default=QUESTION)
    parser.add_argument("--max-tokens", type=int, default=160)
    args = parser.parse_args(argv)
    if not (args.adapter / ADAPTER_CONFIG).is_file():
        print(f"no adapter in {args.adapter}: run `make demo` first", file=sys.stderr)
        return 2

    gateway = start_gateway(settings) if args.serve else None
    url = gateway[1] if gateway else args.url.rstrip("/")
    try:
        wait_ready(url, gateway[0] if gateway else None)
        token = args.admin_token or read_token_file(settings.data_dir)
        try:  # a retrained adapter becomes the name's next version; same content: no-op
            with AdminClient(url, token) as admin:
                admin.register(args.name, args.adapter, load=True, new_version=True)
        except AdapterError as exc:
            print(f"registration failed: {exc}", file=sys.stderr)
            return 1
        print(f"registered {args.name} -> {args.adapter}")
        ask_both(url, args.api_key, args.name, args.question, args.max_tokens)
    finally:
        if gateway:
            stop_gateway(gateway[0])
    return 0


def ask_both(url: str, api_key: str, adapter: str, question: str, max_tokens: int) -> None:
    client = OpenAI(base_url=f"{url}/v1", api_key=api_key, timeout=300.0)
    cards = {card.id: card for card in client.models.list().data}
    parent = getattr(cards.get(adapter), "parent", None)
    base = parent or next(i for i, c in cards.items() if getattr(c, "parent", None) is None)
    print(f"\nQ: {question}")
    for model in (base, adapter):
        reply = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": question}],
            temperature=0.0,
            max_tokens=max_tokens,
        )
        print(f"\n--- model={model!r} ---\n{reply.choices[0].message.content}")


def start_gateway(settings: GatewaySettings) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [str(Path(sys.executable).with_name("lora-gateway")), "serve", "--port", str(port)]
    log = settings.logs_dir / "demo-gateway.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"starting the gateway on port {port} (log: {log}) ...")
    with log.open("ab") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return process, f"http://127.0.0.1:{port}"


def wait_ready(url: str, process: subprocess.Popen[bytes] | None) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"the gateway exited with status {process.returncode}; see its log")
        try:
            if httpx.get(f"{url}/readyz", timeout=5.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2.0)
    raise SystemExit(f"the gateway at {url} was not ready within {READY_TIMEOUT_S:.0f} s")


def stop_gateway(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)  # the gateway stops its vLLM engine tree itself
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


if __name__ == "__main__":
    sys.exit(main())
