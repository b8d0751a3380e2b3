"""A throwaway PostgreSQL server for the tests: its own data directory, a loopback port.

The server binaries come from Debian's ``postgresql`` package (``scripts/ensure-postgres.sh``,
part of ``make test``), which keeps them in ``/usr/lib/postgresql/<major>/bin``, off PATH; a
``pg_ctl`` on PATH is used first. :func:`running_postgres` runs ``initdb`` into a fresh temp dir
(trust authentication, superuser ``postgres``), starts the server with ``pg_ctl`` on a free
127.0.0.1 port with its Unix socket in that dir and durability off (fsync, synchronous commit:
nothing here must survive a crash), and stops it (``-m immediate``) and removes the dir after.

``initdb`` and ``postgres`` refuse to run as root. When the tests run as root (CI, these
machines) the server runs as an unprivileged account through ``runuser``: ``postgres`` when
Debian's package created it, else ``nobody``; the temp dir is made under the system temp dir
(not pytest's root-only one) and handed to that account. As a normal user it runs as that user.

Used by the session fixtures ``postgres_server`` and ``postgres_url`` in ``tests/conftest.py``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path

from sqlalchemy import create_engine, text

SUPERUSER = "postgres"
#: Accounts the server may run as when the tests run as root, in order of preference.
UNPRIVILEGED_ACCOUNTS = ("postgres", "nobody")
START_TIMEOUT_S = 60
ENSURE_SCRIPT = "scripts/ensure-postgres.sh"


class PostgresUnavailableError(RuntimeError):
    """The server binaries are missing or the server did not start."""


def find_bin_dir() -> Path | None:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``, the newest major first."""
    on_path = shutil.which("pg_ctl")
    candidates = [Path(os.path.realpath(on_path)).parent] if on_path else []
    majors = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda d: int(Path(d).parent.name) if Path(d).parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates += [Path(d) for d in majors]
    for directory in candidates:
        if all(os.access(directory / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return directory
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_account() -> str | None:
    """The account to run the server as: None (this one) unless we are root."""
    if os.geteuid() != 0:
        return None
    for account in UNPRIVILEGED_ACCOUNTS:
        with contextlib.suppress(KeyError):
            pwd.getpwnam(account)
            return account
    raise PostgresUnavailableError(
        f"running as root and none of the accounts {UNPRIVILEGED_ACCOUNTS} exists for initdb"
    )


@dataclass
class PostgresServer:
    """A running throwaway server; :meth:`new_database` hands out empty databases."""

    bin_dir: Path
    root: Path
    port: int
    account: str | None
    _numbers: Iterator[int] = field(default_factory=lambda: count(1))

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL (psycopg 3 driver) of ``database`` on this server."""
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def new_database(self, prefix: str = "test") -> str:
        """Create an empty database and return its URL."""
        name = f"{prefix}_{next(self._numbers)}"
        engine = create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()
        return self.url(name)

    def run_tool(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a server binary (``initdb``, ``pg_ctl``) as the server's account."""
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self.account is not None:
            command = ["runuser", "-u", self.account, "--", *command]
        return subprocess.run(
            command,
            check=check,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S + 30,
            cwd=self.root,  # runuser keeps the cwd: the account must be able to enter it
        )

    def start(self) -> None:
        options = " ".join(
            [
                f"-p {self.port}",
                f"-k {self.root}",  # socket dir: no /var/run/postgresql needed
                "-c listen_addresses=127.0.0.1",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                "-c max_connections=100",
                "-c shared_buffers=32MB",
            ]
        )
        result = self.run_tool(
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_path),
            "-o",
            options,
            "-w",
            "-t",
            str(START_TIMEOUT_S),
            "start",
            check=False,
        )
        if result.returncode != 0:
            log = self.log_path.read_text() if self.log_path.exists() else ""
            raise PostgresUnavailableError(
                f"pg_ctl start failed ({result.returncode}): {result.stderr}\n{log}"
            )

    def stop(self) -> None:
        self.run_tool("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop")


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """Start a throwaway server; stop it and delete its files on exit."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise PostgresUnavailableError(
            f"the PostgreSQL server (initdb, pg_ctl, postgres) is not installed: run "
            f"{ENSURE_SCRIPT} (as root)"
        )
    account = _server_account()
    # Under /tmp when the server runs as another account: it must be able to reach the dir, and
    # a short path keeps the Unix socket within its 107-byte limit (pytest's tmp paths are long).
    root = Path(tempfile.mkdtemp(prefix="lora-gateway-pg-", dir="/tmp" if account else None))
    try:
        if account is not None:
            entry = pwd.getpwnam(account)
            os.chown(root, entry.pw_uid, entry.pw_gid)
        server = PostgresServer(bin_dir=bin_dir, root=root, port=_free_port(), account=account)
        init = server.run_tool(
            "initdb",
            "-D",
            str(server.data_dir),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
            check=False,
        )
        if init.returncode != 0:
            raise PostgresUnavailableError(f"initdb failed ({init.returncode}): {init.stderr}")
        for attempt in range(3):  # the free port may be taken before the server binds it
            try:
                server.start()
                break
            except PostgresUnavailableError:
                if attempt == 2:
                    raise
                server.port = _free_port()
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
