"""adapters.registry: persistence, versions, states; adapters.state: the transition table.

Every test taking ``db_url`` runs on SQLite and on a throwaway PostgreSQL (tests/conftest.py).
"""

from __future__ import annotations

import itertools
import multiprocessing

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateTable

from adapters.db import Base
from adapters.errors import AdapterError, AdapterErrorKind
from adapters.registry import NewVersion, Registry, upstream_name
from adapters.state import (
    TRANSITIONS,
    AdapterState,
    InvalidTransitionError,
    check_transition,
)
from tests.support.registry_writers import open_registry, register_versions


def new_version(sha: str = "a", path: str = "/adapters/x") -> NewVersion:
    return NewVersion(
        base_model="tinybase",
        source_path=path,
        rank=8,
        alpha=16.0,
        target_modules=("q_proj", "v_proj"),
        sha256=sha * 64,
        config_sha256="c" * 64,
        size_bytes=1234,
        manifest={"steps": 3},
    )


def test_add_get_list_and_persist_across_registry_objects(db_url: str) -> None:
    registry = Registry(db_url)
    record = registry.add("alpha", new_version(), pinned=True)
    registry.add("beta", new_version("b"), pinned=False)
    assert (record.name, record.active_version, record.pinned) == ("alpha", 1, True)
    active = record.active
    assert active.upstream_name == upstream_name("alpha", 1, "a" * 64, "c" * 64)
    assert active.upstream_name.startswith("alpha@v1.")
    assert upstream_name("alpha", 1, "b" * 64, "c" * 64) != active.upstream_name
    assert active.target_modules == ("q_proj", "v_proj")
    assert active.state is AdapterState.REGISTERED
    assert active.created_at.tzinfo is not None
    registry.set_state("alpha", 1, AdapterState.FAILED, "engine refused: boom")
    registry.close()

    reopened = Registry(db_url)
    assert [r.name for r in reopened.list()] == ["alpha", "beta"]
    again = reopened.get("alpha")
    assert again is not None and again.pinned
    assert again.active.state is AdapterState.FAILED
    assert again.active.last_error == "engine refused: boom"
    assert again.active.manifest == {"steps": 3}
    assert again.active.size_bytes == 1234
    reopened.close()


def test_versions_activate_restore_and_delete(db_url: str) -> None:
    registry = Registry(db_url)
    registry.add("alpha", new_version("a"), pinned=False)
    staged = registry.add("alpha", new_version("b"), pinned=False, activate=False)
    assert staged.active_version == 1 and staged.latest_version == 2
    swapped = registry.set_active("alpha", 2)
    assert swapped.active.sha256 == "b" * 64
    assert [v.version for v in swapped.versions] == [1, 2]
    restored = registry.set_active("alpha", 1)
    assert restored.active.sha256 == "a" * 64
    with pytest.raises(AdapterError) as caught:
        registry.set_active("alpha", 7)
    assert (caught.value.kind, caught.value.param) == (AdapterErrorKind.NOT_FOUND, "version")
    with pytest.raises(AdapterError) as caught:
        registry.set_pinned("nobody", True)
    assert (caught.value.kind, caught.value.param) == (AdapterErrorKind.NOT_FOUND, "name")
    assert registry.delete("alpha") is True
    assert registry.delete("alpha") is False
    assert registry.get("alpha") is None
    # The versions went with the name (foreign key cascade): a new registration starts at v1.
    assert registry.add("alpha", new_version("c"), pinned=False).active_version == 1
    registry.close()


def test_only_settled_states_are_persisted(db_url: str) -> None:
    registry = Registry(db_url)
    registry.add("alpha", new_version(), pinned=False)
    with pytest.raises(ValueError, match="settled"):
        registry.set_state("alpha", 1, AdapterState.LOADING)
    registry.set_state("alpha", 1, AdapterState.LOADED)
    record = registry.get("alpha")
    assert record is not None and record.active.state is AdapterState.LOADED
    registry.set_state("ghost", 1, AdapterState.LOADED)  # deleted meanwhile: ignored
    registry.close()


def test_schema_compiles_for_postgresql() -> None:
    # The same models must work with a PostgreSQL URL: no SQLite-only types in the DDL.
    for table in Base.metadata.sorted_tables:
        ddl = str(CreateTable(table).compile(dialect=postgresql.dialect()))  # type: ignore[no-untyped-call]
        assert "CREATE TABLE" in ddl
    versions = str(
        CreateTable(Base.metadata.tables["adapter_versions"]).compile(dialect=postgresql.dialect())
    )  # type: ignore[no-untyped-call]
    assert "BIGINT" in versions and "JSON" in versions and "TIMESTAMP WITH TIME ZONE" in versions


def test_state_machine_transitions() -> None:
    lifecycle = [
        AdapterState.REGISTERED,
        AdapterState.LOADING,
        AdapterState.LOADED,
        AdapterState.UNLOADING,
        AdapterState.REGISTERED,
    ]
    for current, new in itertools.pairwise(lifecycle):
        assert check_transition(current, new) is new
    assert check_transition(AdapterState.LOADING, AdapterState.FAILED) is AdapterState.FAILED
    assert check_transition(AdapterState.FAILED, AdapterState.LOADING) is AdapterState.LOADING
    for bad in [
        (AdapterState.REGISTERED, AdapterState.LOADED),
        (AdapterState.UNLOADING, AdapterState.LOADED),
        (AdapterState.LOADED, AdapterState.REGISTERED),
    ]:
        with pytest.raises(InvalidTransitionError):
            check_transition(*bad)
    assert set(TRANSITIONS) == set(AdapterState)


def test_two_processes_registering_versions_at_once_never_share_a_number(db_url: str) -> None:
    # Two registries in two processes (two gateway replicas) add versions of the same new name
    # at the same moment: every add succeeds and every version number is handed out once.
    per_process = 15
    Registry(db_url).close()  # the schema exists before the race: replicas start one by one
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    results = context.Queue()
    workers = [
        context.Process(
            target=register_versions,
            args=(db_url, "raced", per_process, tag, barrier, results),
        )
        for tag in ("a", "b")
    ]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    errors = [error for _, _, errs in outcomes for error in errs]
    assert errors == []
    numbers = sorted(n for _, got, _ in outcomes for n in got)
    assert numbers == list(range(1, 2 * per_process + 1))
    registry = Registry(db_url)
    record = registry.get("raced")
    assert record is not None
    assert [v.version for v in record.versions] == numbers
    registry.close()


def test_generation_grows_with_every_change_and_only_then(db_url: str) -> None:
    registry = Registry(db_url)
    replica = Registry(db_url)  # another gateway process polling the same database
    seen = [registry.generation()]

    def changed() -> bool:
        now = replica.generation()
        grew = now > seen[-1]
        seen.append(now)
        return grew

    registry.add("alpha", new_version("a"), pinned=False)
    assert changed()
    registry.add("alpha", new_version("b"), pinned=False, activate=False)
    assert changed()
    registry.set_active("alpha", 2)
    assert changed()
    registry.set_active("alpha", 1)  # restore
    assert changed()
    registry.set_pinned("alpha", True)
    assert changed()
    registry.set_pinned("alpha", False)
    assert changed()
    # Reads, settled states and refused writes change nothing that is served.
    registry.list()
    registry.get("alpha")
    registry.set_state("alpha", 1, AdapterState.LOADED)
    with pytest.raises(AdapterError):
        registry.set_active("alpha", 9)
    with pytest.raises(AdapterError):
        registry.set_pinned("ghost", True)
    assert not changed()
    assert registry.delete("alpha")
    assert changed()
    registry.close()
    replica.close()


def test_a_registry_from_before_the_generation_gains_it(db_url: str) -> None:
    registry = Registry(db_url)
    registry.add("alpha", new_version(), pinned=False)
    registry.close()
    engine = create_engine(db_url)
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE registry_generation"))
    engine.dispose()
    reopened = Registry(db_url)
    assert reopened.generation() == 0
    reopened.set_pinned("alpha", True)
    assert reopened.generation() == 1
    reopened.close()


def test_replicas_starting_together_create_the_schema_once(db_url: str) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(3)
    results = context.Queue()
    workers = [
        context.Process(target=open_registry, args=(db_url, tag, barrier, results))
        for tag in ("a", "b", "c")
    ]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    assert [error for _, error in outcomes] == [None, None, None]
    registry = Registry(db_url)
    assert registry.generation() == 0
    registry.close()
