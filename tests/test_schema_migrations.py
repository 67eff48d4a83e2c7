"""Schema versions: the schema-2 and -3 releases' databases migrated, backed up, served; newer
refused. A fixture is only ever opened as a copy in tmp_path (opening it in place leaves
``-shm``/``-wal`` files beside it)."""

from __future__ import annotations

import logging
import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from node.db import SCHEMA_VERSION, connect, upgrade
from node.migrations import MIGRATIONS, Migration, SchemaTooNew
from tests.conftest import REPO
from tests.ingest_support import running_node, write_config

FIXTURES = {v: REPO / "tests" / "fixtures" / f"ainode-schema-v{v}.sqlite3" for v in (2, 3)}
FIXTURE_STUDY = "1.2.826.0.1.3680043.8.498.10000000000000000000000000000000001"
COUNTED = ("studies", "series", "instances", "study_versions", "route_matches", "jobs", "outbox")


def _copy_fixture(folder: Path, version: int = max(FIXTURES)) -> Path:
    """That release's fixture, copied into ``folder``; version 1 is the schema-2 fixture
    without the tables migration 2 adds."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "ainode.sqlite3"
    shutil.copyfile(FIXTURES[max(version, 2)], path)
    if version == 1:
        conn = sqlite3.connect(path)
        for table in ("vendor_requests", "vendor_inbox", "pseudonyms"):
            conn.execute(f"DROP TABLE {table}")
        conn.execute("PRAGMA user_version=1")
        conn.close()
    return path


def _raw(path: Path) -> sqlite3.Connection:
    """A connection that migrates nothing, to look at a file as it is."""
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def _version(path: Path) -> int:
    conn = _raw(path)
    try:
        return conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()


def _counts(path: Path) -> dict[str, int]:
    conn = _raw(path)
    try:
        return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in COUNTED}
    finally:
        conn.close()


def _shape(path: Path) -> dict[str, object]:
    """Columns, keys, foreign keys and indexes of every table, independent of column order."""
    conn = _raw(path)
    try:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        shape: dict[str, object] = {}
        for table in tables:
            columns = sorted(tuple(row[1:6]) for row in conn.execute(f"PRAGMA table_info({table})"))
            keys = sorted(
                tuple(row[2:5]) for row in conn.execute(f"PRAGMA foreign_key_list({table})")
            )
            indexes = sorted(
                (
                    row[2],
                    row[3],
                    tuple(info[2] for info in conn.execute(f"PRAGMA index_info('{row[1]}')")),
                )
                for row in conn.execute(f"PRAGMA index_list({table})")
            )
            shape[table] = (columns, keys, indexes)
        return shape
    finally:
        conn.close()


@pytest.mark.parametrize("version", sorted(FIXTURES))
def test_fixture_is_its_release(tmp_path: Path, version: int) -> None:
    path = _copy_fixture(tmp_path, version)
    assert _version(path) == version
    assert _counts(path) == {
        "studies": 1,
        "series": 2,
        "instances": 4,
        "study_versions": 1,
        "route_matches": 2,
        "jobs": 2,
        "outbox": 2,
    }


@pytest.mark.parametrize("version", [1, *sorted(FIXTURES)])
def test_migrated_database_has_the_new_schema_and_its_rows(tmp_path: Path, version: int) -> None:
    old = _copy_fixture(tmp_path / "old", version)
    before = _counts(old)
    connect(old).close()
    connect(tmp_path / "new" / "ainode.sqlite3").close()
    assert _version(old) == SCHEMA_VERSION
    assert _shape(old) == _shape(tmp_path / "new" / "ainode.sqlite3")
    assert _counts(old) == before
    backup = old.with_name(f"ainode.sqlite3.v{version}.bak")
    if version < SCHEMA_VERSION:
        assert _version(backup) == version
        assert _counts(backup) == before
    else:
        assert not backup.exists()  # nothing migrated, nothing to back up


def test_migration_4_keeps_jobs_normal_and_unassigned(tmp_path: Path) -> None:
    path = _copy_fixture(tmp_path, 3)
    connect(path).close()
    conn = _raw(path)
    try:
        jobs = conn.execute("SELECT id, state, urgency, worker FROM jobs ORDER BY id").fetchall()
        matches = conn.execute("SELECT urgency FROM route_matches").fetchall()
        workers = conn.execute("SELECT COUNT(*) FROM workers").fetchone()[0]
    finally:
        conn.close()
    assert jobs == [(1, "SUCCEEDED", 1, None), (2, "QUEUED", 1, None)]
    assert matches == [(1,), (1,)]
    assert workers == 0


def _add_column(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE jobs ADD COLUMN note TEXT NOT NULL DEFAULT 'migrated'")


def test_next_migration_backs_up_then_migrates_in_one_transaction(tmp_path: Path) -> None:
    path = _copy_fixture(tmp_path)
    chain = (*MIGRATIONS, Migration(SCHEMA_VERSION + 1, "jobs.note", _add_column))
    conn = connect(path)
    upgrade(conn, path, chain)
    notes = [row[0] for row in conn.execute("SELECT note FROM jobs ORDER BY id")]
    conn.close()
    assert notes == ["migrated", "migrated"]
    assert _version(path) == SCHEMA_VERSION + 1
    backup = path.with_name(f"ainode.sqlite3.v{SCHEMA_VERSION}.bak")
    assert _version(backup) == SCHEMA_VERSION
    assert _counts(backup) == _counts(path)
    assert not list(tmp_path.glob("*.partial"))


def test_failed_migration_leaves_the_database_as_it_was(tmp_path: Path) -> None:
    path = _copy_fixture(tmp_path)

    def half_then_fail(conn: sqlite3.Connection) -> None:
        _add_column(conn)
        raise sqlite3.OperationalError("migration failed half way")

    chain = (*MIGRATIONS, Migration(SCHEMA_VERSION + 1, "fails", half_then_fail))
    conn = connect(path)
    with pytest.raises(sqlite3.OperationalError, match="half way"):
        upgrade(conn, path, chain)
    conn.close()
    assert _version(path) == SCHEMA_VERSION
    assert "note" not in str(_shape(path)["jobs"])


def test_concurrent_first_connects_migrate_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _copy_fixture(tmp_path, version=1)
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def first_connect() -> None:
        barrier.wait()
        try:
            connect(path).close()
        except BaseException as exc:  # reported below, with the thread's own error
            errors.append(exc)

    caplog.set_level(logging.WARNING, logger="node")
    threads = [threading.Thread(target=first_connect) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    assert _version(path) == SCHEMA_VERSION
    assert sum("backed up" in record.getMessage() for record in caplog.records) == 1


def test_newer_database_is_refused_naming_both_versions(tmp_path: Path) -> None:
    path = _copy_fixture(tmp_path / "data")
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 7}")
    conn.close()
    with pytest.raises(SchemaTooNew) as refused:
        connect(path)
    assert refused.value.found == SCHEMA_VERSION + 7
    assert refused.value.known == SCHEMA_VERSION
    config = write_config(tmp_path, 1)
    for command in (["serve"], ["studies"]):
        result = subprocess.run(
            [sys.executable, "-m", "node", *command, "--config", str(config)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 1, result.stderr
        message = f"schema version {SCHEMA_VERSION + 7}, newer than version {SCHEMA_VERSION}"
        assert message in result.stderr
        assert "Traceback" not in result.stderr
    assert _version(path) == SCHEMA_VERSION + 7  # untouched


@pytest.mark.parametrize("version", sorted(FIXTURES))
def test_node_serves_a_release_database(tmp_path: Path, version: int) -> None:
    _copy_fixture(tmp_path / "data", version)
    with running_node(tmp_path) as node:
        listed = subprocess.run(
            [sys.executable, "-m", "node", "studies", "--config", str(node.config_path)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert listed.returncode == 0, listed.stderr
    assert FIXTURE_STUDY in listed.stdout
    assert _version(node.database) == SCHEMA_VERSION
