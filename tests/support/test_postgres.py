"""tests.support.postgres: the throwaway server starts, serves, and leaves nothing behind."""

from __future__ import annotations

import os
import socket

from sqlalchemy import create_engine, text

from tests.support.postgres import find_bin_dir, running_postgres


def test_a_throwaway_server_runs_unprivileged_and_is_gone_after() -> None:
    assert find_bin_dir() is not None
    with running_postgres() as server:
        url = server.new_database()
        assert server.new_database() != url  # each call an empty database of its own
        engine = create_engine(url)
        with engine.connect() as connection:
            address = connection.scalar(text("SELECT inet_server_addr()"))
            data_dir = connection.scalar(text("SHOW data_directory"))
        engine.dispose()
        assert str(address) == "127.0.0.1"
        assert data_dir == str(server.data_dir)
        owner = server.data_dir.stat().st_uid
        assert owner != 0 if os.geteuid() == 0 else owner == os.geteuid()
        root, port = server.root, server.port
    assert not root.exists()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # stopped
