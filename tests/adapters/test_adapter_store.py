"""adapters.store: validated, read-only, content-addressed copies; reuse; collection."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from adapters.contract import ADAPTER_CONFIG, ADAPTER_WEIGHTS, MANIFEST, PICKLE_WEIGHTS
from adapters.errors import AdapterError, AdapterErrorKind
from adapters.registry import NewVersion, Registry
from adapters.store import AdapterStore
from adapters.validation import AdapterValidator, ValidationLimits
from tests.adapters.builders import write_adapter, write_base_model

BASE = "tinybase"


@pytest.fixture
def roots(tmp_path: Path) -> Path:
    root = (tmp_path / "adapters").resolve()
    root.mkdir()
    return root


@pytest.fixture
def store(tmp_path: Path, roots: Path) -> AdapterStore:
    validator = AdapterValidator(
        BASE,
        ValidationLimits(16, 1 << 30, (roots,)),
        base_dir=write_base_model(tmp_path / BASE),
    )
    return AdapterStore(tmp_path / "store", validator, collect_grace_s=0)


def test_admit_validates_and_stores_a_read_only_copy(store: AdapterStore, roots: Path) -> None:
    source = write_adapter(roots / "a", base_model=BASE, manifest={"adapter_name": "a"})
    (source / PICKLE_WEIGHTS).write_bytes(b"not copied")
    (source / "README.md").write_text("not copied either")
    layout = store.admit("a", source)

    assert layout.source_path == source.resolve()
    assert layout.path.parent == store.root and len(layout.path.name) == 64
    assert sorted(p.name for p in layout.path.iterdir()) == sorted(
        [ADAPTER_CONFIG, ADAPTER_WEIGHTS, MANIFEST]
    )
    assert layout.manifest == {"adapter_name": "a"}
    for path in [layout.path, *layout.path.iterdir()]:
        assert not stat.S_IMODE(path.stat().st_mode) & 0o222, path
    assert (layout.path / ADAPTER_WEIGHTS).read_bytes() == (source / ADAPTER_WEIGHTS).read_bytes()
    assert not [p for p in store.root.iterdir() if p.name.startswith(".tmp-")]

    new = NewVersion.from_layout(layout, base_model=BASE)
    assert (new.source_path, new.store_path) == (str(source.resolve()), str(layout.path))


def test_same_content_is_stored_once(store: AdapterStore, roots: Path) -> None:
    first = store.admit("a", write_adapter(roots / "a", base_model=BASE, seed=1))
    again = store.admit("b", write_adapter(roots / "b", base_model=BASE, seed=1))
    other = store.admit("c", write_adapter(roots / "c", base_model=BASE, seed=2))
    assert first.path == again.path != other.path
    assert len(list(store.root.iterdir())) == 2


def test_a_symlinked_file_is_refused_not_followed(store: AdapterStore, roots: Path) -> None:
    elsewhere = write_adapter(roots / "real", base_model=BASE)
    linked = roots / "linked"
    linked.mkdir()
    (linked / ADAPTER_CONFIG).write_bytes((elsewhere / ADAPTER_CONFIG).read_bytes())
    (linked / ADAPTER_WEIGHTS).symlink_to(elsewhere / ADAPTER_WEIGHTS)
    with pytest.raises(AdapterError) as caught:
        store.admit("linked", linked)
    assert (caught.value.kind, caught.value.code) == (
        AdapterErrorKind.INVALID,
        "not_a_regular_file",
    )
    assert "regular file" in caught.value.message
    assert not [p for p in store.root.iterdir()]


def test_collect_keeps_copies_in_use_and_young_ones(store: AdapterStore, roots: Path) -> None:
    kept = store.admit("a", write_adapter(roots / "a", base_model=BASE, seed=1))
    dropped = store.admit("b", write_adapter(roots / "b", base_model=BASE, seed=2))
    store.collect_grace_s = 3600
    assert store.collect([str(kept.path)]) == []  # the unused one is too young
    store.collect_grace_s = 0
    assert store.collect([str(kept.path)]) == [dropped.path]
    assert kept.path.is_dir() and not dropped.path.exists()


def test_verify_names_a_damaged_copy(store: AdapterStore, roots: Path, tmp_path: Path) -> None:
    layout = store.admit("a", write_adapter(roots / "a", base_model=BASE, seed=1))
    registry = Registry(f"sqlite:///{tmp_path / 'r.db'}")
    version = registry.add("a", NewVersion.from_layout(layout, BASE), pinned=False).active
    assert version.load_path == str(layout.path)
    store.verify(version)
    os.chmod(layout.path, 0o700)
    (layout.path / ADAPTER_WEIGHTS).unlink()
    with pytest.raises(AdapterError) as caught:
        store.verify(version)
    assert (caught.value.kind, caught.value.code) == (
        AdapterErrorKind.CONFLICT,
        "adapter_files_changed",
    )
    registry.close()


def test_a_registry_from_before_the_store_gains_the_column(db_url: str) -> None:
    url = db_url  # the ALTER TABLE migration, on SQLite and on PostgreSQL
    Registry(url).close()
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("ALTER TABLE adapter_versions DROP COLUMN store_path"))
    engine.dispose()
    registry = Registry(url)
    new = NewVersion(BASE, "/src", 8, 16.0, ("q_proj",), "a" * 64, "b" * 64, 10)
    version = registry.add("old", new, pinned=False).active
    assert (version.store_path, version.load_path) == (None, "/src")
    registry.close()


def test_versions_from_before_the_store_are_adopted_when_their_source_is_intact(
    store: AdapterStore, roots: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = Registry(f"sqlite:///{tmp_path / 'legacy.db'}")
    intact = write_adapter(roots / "intact", base_model=BASE, seed=1)
    changed = write_adapter(roots / "changed", base_model=BASE, seed=2)
    for name, path in (("intact", intact), ("changed", changed)):
        layout = store.validator.validate(name, path)  # recorded the old way: no stored copy
        registry.add(name, NewVersion.from_layout(layout, BASE), pinned=False)
    write_adapter(changed, base_model=BASE, seed=3)

    assert store.adopt(registry) == ["intact v1"]
    adopted = registry.get("intact")
    assert adopted is not None and adopted.active.store_path is not None
    assert Path(adopted.active.load_path).parent == store.root
    left = registry.get("changed")
    assert left is not None and left.active.store_path is None
    assert "changed v1 has no stored copy" in caplog.text
    assert store.adopt(registry) == []  # nothing left to adopt
    registry.close()
