"""Child-process plumbing for the managed engine: loopback ports, process groups, logs.

Used by :mod:`gateway.engines.managed` only. The engine child leads its own session, so its PID
is its process group id: signalling the group reaches vLLM's API server, engine core and
workers together. On Linux the child also gets SIGTERM from the kernel if the gateway dies
without stopping it (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def free_loopback_port() -> int:
    """A port nobody listens on now (the OS picks it); the child binds it moments later."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Whether a restarted child can bind ``port`` again (TIME_WAIT does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def pdeathsig_hook() -> Callable[[], None] | None:
    """A pre-exec hook that makes the kernel SIGTERM the child when the gateway dies (Linux).

    libc is looked up here, in the parent: between fork and exec the child only calls it.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1

    def hook() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)

    return hook


def log_tail(path: Path, lines: int = 20, max_bytes: int = 16_384) -> str:
    """The last lines of a log file, for error messages."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


async def wait_group_gone(process: subprocess.Popen[bytes], pgid: int, bound_s: float) -> bool:
    """Wait up to ``bound_s`` for every process of the group to end; True if they did."""
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        process.poll()  # reap the leader, or it stays in the group as a zombie
        if not group_alive(pgid):
            return True
        await asyncio.sleep(0.05)
    process.poll()
    return not group_alive(pgid)
