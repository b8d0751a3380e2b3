"""Serve a real ASGI app on a free loopback port for a test, in this loop or in a thread.

``serve_in_loop`` runs uvicorn as a task of the running event loop (for async tests whose
clients are async too). ``serve_in_thread`` runs uvicorn and everything the app needs in its own
thread and event loop, so the synchronous OpenAI SDK can call it from a plain test. Also
:class:`StaticEngine`: an :class:`~gateway.engines.base.Engine` at a fixed URL whose state the
test sets, for gateway tests that do not need engine supervision, and
:func:`with_adapters_dir`: settings whose ``--adapters-dir`` serves given adapters, so a test
gets its adapters the way production does (the app's own lifecycle registers them at start).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import AsyncExitStack
from pathlib import Path

import uvicorn
from starlette.types import ASGIApp

from gateway.app import create_app
from gateway.engines.base import Engine, EngineState, EngineStatus
from gateway.engines.client import ClientLimits
from gateway.settings import GatewaySettings

START_TIMEOUT_S = 30.0


class StaticEngine(Engine):
    """An engine someone else runs at ``url``; its state is whatever the test sets."""

    def __init__(
        self,
        url: str,
        base_model: str,
        *,
        name: str = "static",
        lora_capacity: int = 2,
        client_limits: ClientLimits | None = None,
        api_key: str | None = None,
    ) -> None:
        super().__init__(
            name=name,
            base_model=base_model,
            lora_capacity=lora_capacity,
            client_limits=client_limits,
            api_key=api_key,
        )
        self._url = url.rstrip("/")
        self.state = EngineState.READY
        self.reason = "set by the test"

    @property
    def url(self) -> str:
        return self._url

    def status(self) -> EngineStatus:
        return EngineStatus(
            name=self.name, state=self.state, reason=self.reason, restarts=0, url=self._url
        )

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self.state = EngineState.STOPPED


def bind_free_port() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def unused_url() -> str:
    """A loopback URL nothing listens on (the port was free a moment ago)."""
    with bind_free_port() as sock:
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _server(app: ASGIApp) -> uvicorn.Server:
    config = uvicorn.Config(
        app, log_level="warning", lifespan="on", access_log=False, timeout_graceful_shutdown=2
    )
    return uvicorn.Server(config)


@contextlib.asynccontextmanager
async def serve_in_loop(app: ASGIApp) -> AsyncIterator[str]:
    """Serve ``app`` from the running loop; yields its base URL."""
    sock = bind_free_port()
    server = _server(app)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("server exited before it started")
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        sock.close()


AppBuilder = Callable[[AsyncExitStack], Awaitable[ASGIApp]]


@contextlib.contextmanager
def serve_in_thread(build: AppBuilder) -> Iterator[str]:
    """Build an app with ``build`` and serve it, both in a thread with its own event loop.

    ``build`` runs in that loop (so engine clients are bound to it) and may register cleanup on
    the exit stack it receives; it runs after the server stopped.
    """
    sock = bind_free_port()
    started = threading.Event()
    failure: list[BaseException] = []
    holder: list[uvicorn.Server] = []

    async def main() -> None:
        async with AsyncExitStack() as stack:
            server = _server(await build(stack))
            holder.append(server)
            serving = asyncio.create_task(server.serve(sockets=[sock]))
            while not server.started and not serving.done():  # noqa: ASYNC110 (uvicorn has no event)
                await asyncio.sleep(0.01)
            started.set()
            await serving

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:
            failure.append(exc)
        finally:
            started.set()

    thread = threading.Thread(target=run, name="gateway-test-server", daemon=True)
    thread.start()
    started.wait(START_TIMEOUT_S)
    if failure or not holder or not holder[0].started:
        if holder:
            holder[0].should_exit = True
        thread.join(timeout=START_TIMEOUT_S)
        sock.close()
        raise RuntimeError("the test server did not start") from (failure[0] if failure else None)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        holder[0].should_exit = True
        thread.join(timeout=START_TIMEOUT_S)
        sock.close()


def with_adapters_dir(settings: GatewaySettings, adapters: Mapping[str, Path]) -> GatewaySettings:
    """``settings`` whose ``--adapters-dir`` holds a copy of each adapter under its public name.

    The directory is ``<data_dir>/adapters-in``; the app's lifecycle registers each one at start
    (the production path) and loads it on first use.
    """
    directory = settings.data_dir / "adapters-in"
    for public, source in adapters.items():
        shutil.copytree(source, directory / public, dirs_exist_ok=True)
    # model_copy does not validate: give the field its final type.
    return settings.model_copy(update={"adapters_dir": directory})


@contextlib.contextmanager
def serve_gateway_in_thread(
    settings: GatewaySettings,
    engine_url: str,
    base_model: str,
    adapters: Mapping[str, Path],
    *,
    engine_api_key: str | None = None,
) -> Iterator[str]:
    """The real gateway app in front of the engine at ``engine_url``, served from a thread.

    ``adapters`` (public name -> directory) are served through ``--adapters-dir``
    (:func:`with_adapters_dir`).
    """
    settings = with_adapters_dir(settings, adapters)

    async def build(stack: AsyncExitStack) -> ASGIApp:
        engine = StaticEngine(engine_url, base_model, api_key=engine_api_key)
        stack.push_async_callback(engine.close_client)
        return create_app(settings, engines=[engine])

    with serve_in_thread(build) as url:
        yield url
