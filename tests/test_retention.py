"""Retention: exactly the delivered, old studies go; pending, running and undelivered ones
stay; an emergency frees the watermark; result copies; ``ainode purge``; settings."""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path

import pytest

from node.audit.cli import read_records
from node.cli import main
from node.config import ConfigError
from node.db import connect, transaction
from node.retention.policy import Verdict, assess_one
from node.retention.runner import Retention
from node.retention.stage import RetentionStage
from node.retention.trash import TRASH_DIR_NAME, folder_bytes
from tests.audit_support import check_message
from tests.conftest import wait_until
from tests.retention_support import (
    DAY,
    NOW,
    assert_consistent,
    ingest,
    settle,
    study_rows,
    write_config,
)

OLD = NOW - 40 * DAY
YOUNG = NOW - 5 * DAY


@pytest.fixture
def config(tmp_path: Path):
    return write_config(tmp_path, days=30, results_days=10)


def _pipeline(config, tmp_path: Path) -> dict[str, object]:
    """One study in each state the rules name."""
    conn = connect(config.storage.database_path)
    out = config.storage.outputs_dir

    def new(name: str, **kwargs: object):
        study = ingest(config, tmp_path / name)
        return settle(conn, study, outputs_dir=out, **kwargs) if kwargs else study

    studies = {
        "delivered_old": new("a", at=OLD, job_state="SUCCEEDED", outbox_state="SENT"),
        "unrouted_old": new("b", at=OLD),
        "failed_job_old": new("c", at=OLD, job_state="FAILED"),
        "delivered_young": new("d", at=YOUNG, job_state="SUCCEEDED", outbox_state="SENT"),
        "receiving": new("e"),
        "not_routed": new("f", at=OLD, routed=False),
        "running": new("g", at=OLD, job_state="RUNNING"),
        "queued": new("h", at=OLD, job_state="QUEUED"),
        "pending": new("i", at=OLD, job_state="SUCCEEDED", outbox_state="PENDING"),
        "dead": new("j", at=OLD, job_state="SUCCEEDED", outbox_state="DEAD"),
        "vendor": new("k", at=OLD, job_state="SUCCEEDED", vendor_expires_at=NOW + DAY),
        "unjobbed": new("l", at=OLD, job_state="SUCCEEDED"),
    }
    with transaction(conn):  # routed, but the executor has not made its job yet
        conn.execute("DELETE FROM jobs WHERE id = ?", (studies["unjobbed"].job_id,))
    conn.close()
    return studies


def test_purges_exactly_the_delivered_old_studies(config, tmp_path: Path) -> None:
    studies = _pipeline(config, tmp_path)
    retention = Retention(config, clock=lambda: NOW)
    conn = connect(config.storage.database_path)
    verdicts = {s.study_instance_uid: s.verdict for s in retention.plan(conn)}
    names = {study.uid: name for name, study in studies.items()}
    assert {names[uid]: verdict for uid, verdict in verdicts.items()} == {
        "delivered_old": Verdict.DELETABLE,
        "unrouted_old": Verdict.DELETABLE,
        "failed_job_old": Verdict.DELETABLE,
        "delivered_young": Verdict.YOUNG,
        "receiving": Verdict.RECEIVING,
        "not_routed": Verdict.NOT_ROUTED,
        "running": Verdict.RUNNING,
        "queued": Verdict.RUNNING,
        "pending": Verdict.UNDELIVERED,
        "dead": Verdict.DEAD_LETTER,
        "vendor": Verdict.AWAITING_VENDOR,
        "unjobbed": Verdict.RUNNING,
    }

    for study in retention.plan(conn):  # the all-studies query and the one-study one agree
        assert assess_one(conn, study.study_instance_uid, NOW, 30 * DAY) == study
    purged = retention.purge_aged(conn)

    gone = {"delivered_old", "unrouted_old", "failed_job_old"}
    assert {names[p.study_instance_uid] for p in purged} == gone
    assert all(p.bytes_freed > 0 for p in purged)
    for name, study in studies.items():
        files = [config.storage.spool_dir / relpath for relpath in study.relpaths]
        if name in gone:
            assert study_rows(conn, study.uid) == 0, name
            assert not any(path.exists() for path in files), name
        else:
            assert study_rows(conn, study.uid) > 0, name
            assert all(path.exists() for path in files), name
    delivered = studies["delivered_old"]
    assert (
        conn.execute("SELECT COUNT(*) FROM jobs WHERE id = ?", (delivered.job_id,)).fetchone()[0]
        == 0
    )
    assert not (config.storage.outputs_dir / f"job-{delivered.job_id}").exists()
    assert not any((config.storage.spool_dir / TRASH_DIR_NAME).iterdir())
    conn.close()
    assert_consistent(config)


def test_emergency_frees_the_oldest_delivered_until_the_watermark(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = write_config(tmp_path, days=30, results_days=10, emergency_margin_mb=0)
    conn = connect(config.storage.database_path)
    delivered = [
        settle(
            conn,
            ingest(config, tmp_path / f"d{i}"),
            at=YOUNG + i * DAY,
            job_state="SUCCEEDED",
            outbox_state="SENT",
        )
        for i in range(3)
    ]
    pending = settle(
        conn,
        ingest(config, tmp_path / "p"),
        at=YOUNG - DAY,
        job_state="SUCCEEDED",
        outbox_state="PENDING",
    )
    spool = config.storage.spool_dir
    needed = sum(folder_bytes(spool / s.relpaths[0].split("/")[0]) for s in delivered[:2])
    capacity = 1024 * 1024 + folder_bytes(spool) - needed  # free = watermark once two are gone

    def free(_path: Path) -> int:
        return capacity - folder_bytes(spool)

    retention = Retention(config, clock=lambda: NOW, free_bytes=free)
    assert retention.needs_emergency()
    with caplog.at_level(logging.INFO, logger="node.retention"):
        purged = retention.purge_emergency(conn)

    assert [p.study_instance_uid for p in purged] == [s.uid for s in delivered[:2]]
    assert not retention.needs_emergency()
    assert study_rows(conn, delivered[2].uid) and study_rows(conn, pending.uid)
    assert f"purged study {delivered[0].uid}" in caplog.text
    assert "emergency purge: 2 studies" in caplog.text
    assert "Synthetic" not in caplog.text and "SYNTH-001" not in caplog.text
    conn.close()
    assert_consistent(config)


def test_emergency_with_nothing_delivered_deletes_nothing(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    conn = connect(config.storage.database_path)
    pending = settle(conn, ingest(config, tmp_path / "p"), at=OLD, job_state="RUNNING")
    retention = Retention(config, clock=lambda: NOW, free_bytes=lambda _path: 0)
    assert retention.purge_emergency(conn) == []
    assert study_rows(conn, pending.uid)
    conn.close()


def test_result_copies_follow_results_days(config, tmp_path: Path) -> None:
    conn = connect(config.storage.database_path)
    out = config.storage.outputs_dir
    sent_old = settle(
        conn,
        ingest(config, tmp_path / "a"),
        at=NOW - 12 * DAY,
        job_state="SUCCEEDED",
        outbox_state="SENT",
        outputs_dir=out,
    )
    sent_young = settle(
        conn,
        ingest(config, tmp_path / "b"),
        at=NOW - 8 * DAY,
        job_state="SUCCEEDED",
        outbox_state="SENT",
        outputs_dir=out,
    )
    pending = settle(
        conn,
        ingest(config, tmp_path / "c"),
        at=NOW - 12 * DAY,
        job_state="SUCCEEDED",
        outbox_state="PENDING",
        outputs_dir=out,
    )
    (out / "job-999").mkdir()  # its job and study are gone
    (out / "job-999" / "seg.dcm").write_bytes(b"y" * 10)
    os.utime(out / "job-999", (NOW - 11 * DAY, NOW - 11 * DAY))
    (out / "job-998").mkdir()  # no job row either, but written recently
    os.utime(out / "job-998", (NOW - DAY, NOW - DAY))

    removed = Retention(config, clock=lambda: NOW).purge_results(conn)

    assert sorted(r.path.name for r in removed) == sorted([f"job-{sent_old.job_id}", "job-999"])
    assert (out / f"job-{sent_young.job_id}").is_dir() and (out / f"job-{pending.job_id}").is_dir()
    assert (out / "job-998").is_dir()
    assert study_rows(conn, sent_old.uid)  # the study itself stays until its own days
    conn.close()


def test_purge_command_dry_run_then_for_real(
    config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old_at = time.time() - 40 * DAY  # the command runs on the real clock
    conn = connect(config.storage.database_path)
    old = settle(
        conn, ingest(config, tmp_path / "a"), at=old_at, job_state="SUCCEEDED", outbox_state="SENT"
    )
    kept = settle(
        conn, ingest(config, tmp_path / "b"), at=old_at, job_state="SUCCEEDED", outbox_state="DEAD"
    )
    conn.close()
    config_path = str(tmp_path / "node.yaml")

    assert main(["purge", "--config", config_path, "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert old.uid in dry and kept.uid not in dry
    assert "would delete 1 studies" in dry
    assert "1 kept: dead-lettered results" in dry
    assert all((config.storage.spool_dir / p).exists() for p in old.relpaths)

    assert main(["purge", "--config", config_path]) == 0
    done = capsys.readouterr().out
    assert old.uid in done and "deleted 1 studies" in done
    assert not any((config.storage.spool_dir / p).exists() for p in old.relpaths)
    assert_consistent(config)
    # each deletion is in the audit trail (DICOM Study Deleted), with the patient; the dry
    # run recorded none
    audit_log = config.audit.file_path(config.storage.data_dir)
    (deleted,) = [r for r in read_records(audit_log) if r["kind"] == "study-deleted"]
    assert deleted["study_uids"] == [old.uid]
    root = check_message(deleted["xml"])
    assert root.find("ParticipantObjectIdentification[@ParticipantObjectTypeCode='1']") is not None


def test_settings_say_what_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"results_days \(30.0\) must not exceed days"):
        write_config(tmp_path, days=7, results_days=30)
    with pytest.raises(ConfigError, match=r"retention\.dayz"):
        write_config(tmp_path, dayz=7)
    defaults = write_config(tmp_path).storage.retention
    assert defaults.enabled and defaults.days == 30 and defaults.emergency


def test_stage_purges_in_an_emergency_and_stops(tmp_path: Path) -> None:
    config = write_config(tmp_path, free_check_s=0.05)
    conn = connect(config.storage.database_path)
    study = settle(
        conn, ingest(config, tmp_path / "a"), at=YOUNG, job_state="SUCCEEDED", outbox_state="SENT"
    )
    folder = config.storage.spool_dir / study.relpaths[0].split("/")[0]

    def free(_path: Path) -> int:
        return 0 if folder.exists() else 10**12  # full until the study is gone

    full = Retention(config, clock=lambda: NOW, free_bytes=free)
    stage = RetentionStage(config, full)
    stage.start()
    try:
        wait_until(lambda: study_rows(conn, study.uid) == 0, timeout=30)
    finally:
        stage.stop()
    conn.close()
    assert_consistent(config)


def test_stage_off_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    stage = RetentionStage(write_config(tmp_path, enabled=False))
    with caplog.at_level(logging.WARNING, logger="node.retention"):
        stage.start()
        stage.stop()
    assert "retention is off" in caplog.text


def test_a_row_retention_does_not_know_fails_the_purge_and_keeps_the_study(
    config, tmp_path: Path
) -> None:
    """A table added later that references a study's job: the foreign key refuses the
    delete, and the study's files come back from the trash."""
    conn = connect(config.storage.database_path)
    study = settle(
        conn, ingest(config, tmp_path / "a"), at=OLD, job_state="SUCCEEDED", outbox_state="SENT"
    )
    conn.execute("CREATE TABLE later (job_id INTEGER NOT NULL REFERENCES jobs(id))")
    conn.execute("INSERT INTO later VALUES (?)", (study.job_id,))

    with pytest.raises(sqlite3.IntegrityError):
        Retention(config, clock=lambda: NOW).purge_aged(conn)

    assert study_rows(conn, study.uid)
    conn.close()
    assert all((config.storage.spool_dir / p).exists() for p in study.relpaths)
    assert_consistent(config)
