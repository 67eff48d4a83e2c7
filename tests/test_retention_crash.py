"""A purge killed with SIGKILL between its steps: after a restart the index and the spool
agree, and the study is either wholly gone or wholly back, never resurrected in part."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from node.config import NodeConfig
from node.db import connect, transaction
from node.ingest.header import parse_file_header
from node.ingest.index import Index
from node.ingest.recovery import recover_spool
from node.ingest.spool import Spool, instance_relpath
from node.retention.purge import PurgePaths, purge_lock, purge_study
from node.retention.trash import TRASH_DIR_NAME
from node.service import Node
from tests.conftest import REPO, free_port
from tests.ingest_support import make_instances
from tests.retention_support import (
    DAY,
    NOW,
    Study,
    assert_consistent,
    ingest,
    settle,
    study_rows,
    write_config,
)

#: Runs one aged purge and SIGKILLs itself at the named hook point.
PURGE_AND_DIE = """
import os, signal, sys
from node.config import load_node_config
from node.db import connect
from node.retention.runner import Retention

def hook(point):
    if point == sys.argv[2]:
        os.kill(os.getpid(), signal.SIGKILL)

config = load_node_config(sys.argv[1])
Retention(config, clock=lambda: float(sys.argv[3]), hook=hook).purge_aged(
    connect(config.storage.database_path)
)
"""


def _prepared(tmp_path: Path) -> tuple[NodeConfig, Study, Study]:
    config = write_config(tmp_path, port=free_port())
    conn = connect(config.storage.database_path)
    doomed = settle(
        conn,
        ingest(config, tmp_path / "a", count=5),
        at=NOW - 40 * DAY,
        job_state="SUCCEEDED",
        outbox_state="SENT",
        outputs_dir=config.storage.outputs_dir,
    )
    kept = settle(conn, ingest(config, tmp_path / "b"), at=NOW - 40 * DAY, job_state="RUNNING")
    conn.close()
    return config, doomed, kept


def _purge_and_die(tmp_path: Path, point: str) -> None:
    process = subprocess.run(
        [sys.executable, "-c", PURGE_AND_DIE, str(tmp_path / "node.yaml"), point, str(NOW)],
        cwd=REPO,
        capture_output=True,
        timeout=120,
    )
    assert process.returncode == -signal.SIGKILL, process.stderr.decode()


def _restart(config: NodeConfig) -> None:
    """What a start after a crash does (no clean-stop marker), then a clean stop."""
    node = Node(config)
    node.start()
    node.stop()


def _spool_files(config: NodeConfig, study: Study) -> list[bool]:
    return [(config.storage.spool_dir / relpath).exists() for relpath in study.relpaths]


@pytest.mark.parametrize("point", ["moved", "deleted"])
def test_killed_purge_is_finished_at_restart(tmp_path: Path, point: str) -> None:
    config, doomed, kept = _prepared(tmp_path)
    _purge_and_die(tmp_path, point)

    trash = config.storage.spool_dir / TRASH_DIR_NAME
    assert any(trash.iterdir())  # killed before the trash was emptied
    assert not any(_spool_files(config, doomed))
    conn = connect(config.storage.database_path)
    assert bool(study_rows(conn, doomed.uid)) == (point == "moved")
    conn.close()

    _restart(config)

    conn = connect(config.storage.database_path)
    assert study_rows(conn, doomed.uid) == 0
    assert study_rows(conn, kept.uid) and all(_spool_files(config, kept))
    conn.close()
    assert not any(trash.iterdir())
    assert not (config.storage.outputs_dir / TRASH_DIR_NAME / doomed.uid).exists()
    assert_consistent(config)


def test_recover_spool_does_not_walk_the_trash(tmp_path: Path) -> None:
    config, doomed, _kept = _prepared(tmp_path)
    _purge_and_die(tmp_path, "deleted")  # rows gone, files still in the trash
    index = Index(config.storage.database_path)
    try:
        assert recover_spool(Spool(config.storage.spool_dir, 0), index) == 0
    finally:
        index.close()
    conn = connect(config.storage.database_path)
    assert study_rows(conn, doomed.uid) == 0
    conn.close()


def test_killed_purge_of_a_study_needed_again_is_undone(tmp_path: Path) -> None:
    config, doomed, _kept = _prepared(tmp_path)
    _purge_and_die(tmp_path, "moved")
    conn = connect(config.storage.database_path)
    with transaction(conn):  # an operator re-queued its delivery before the restart
        conn.execute("UPDATE outbox SET state = 'PENDING', sent_at = NULL")
    conn.close()

    _restart(config)

    conn = connect(config.storage.database_path)
    assert study_rows(conn, doomed.uid)
    conn.close()
    assert all(_spool_files(config, doomed))
    assert (config.storage.outputs_dir / f"job-{doomed.job_id}" / "sr.dcm").exists()
    assert_consistent(config)


def test_a_file_stored_during_the_purge_keeps_the_study(tmp_path: Path) -> None:
    """A C-STORE that renamed its file into the study folder just before the purge moved it,
    and had not committed its row: the purge is undone and the file is back."""
    config, doomed, _kept = _prepared(tmp_path)
    storage = config.storage
    paths = PurgePaths(
        storage.data_dir, storage.spool_dir, storage.outputs_dir, storage.data_dir / "vi"
    )
    late = Path(doomed.relpaths[0]).with_name("late.dcm").as_posix()

    def store_late(point: str) -> None:
        if point == "moved":
            (storage.spool_dir / TRASH_DIR_NAME / late).write_bytes(b"in flight")

    conn = connect(storage.database_path)
    with purge_lock(storage.data_dir):
        done = purge_study(conn, paths, doomed.uid, now=NOW, max_age_s=30 * DAY, hook=store_late)
    assert done is None
    assert study_rows(conn, doomed.uid)
    conn.close()
    assert all(_spool_files(config, doomed))
    assert (storage.spool_dir / late).read_bytes() == b"in flight"


def test_killed_purge_with_an_unindexed_file_in_the_trash_is_undone(tmp_path: Path) -> None:
    """Killed after the move, with a file in the trash that has no row (a C-STORE renamed
    into the study's folder and the node died before its commit): the study comes back and
    start-up indexes the file, as for any crash between rename and commit."""
    config, doomed, _kept = _prepared(tmp_path)
    _purge_and_die(tmp_path, "moved")
    source = make_instances(tmp_path / "late", 1, study_uid=doomed.uid, start=50)[0]
    header = parse_file_header(source)
    late = instance_relpath(doomed.uid, header.series_instance_uid, header.sop_instance_uid)
    target = config.storage.spool_dir / TRASH_DIR_NAME / late
    target.parent.mkdir(parents=True)
    target.write_bytes(source.read_bytes())

    _restart(config)

    conn = connect(config.storage.database_path)
    count = conn.execute(
        "SELECT COUNT(*) FROM instances WHERE study_instance_uid = ?", (doomed.uid,)
    ).fetchone()[0]
    conn.close()
    assert count == len(doomed.relpaths) + 1
    assert all(_spool_files(config, doomed))
    assert_consistent(config)
