"""CLI manners: DICOMDIR files skipped by send, a closed pipe, no pynetdicom chatter."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from node.db import connect
from node.scu import MEDIA_STORAGE_DIRECTORY
from tests.conftest import REPO
from tests.ingest_support import make_instances, running_node, write_config

FIXTURE = REPO / "tests" / "fixtures" / "ainode-schema-v2.sqlite3"


def _ainode(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _dicomdir(path: Path) -> Path:
    """A file with a DICOMDIR's file meta, as a scanner's export carries at its root."""
    ds = Dataset()
    ds.FileSetID = "EXPORT"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MEDIA_STORAGE_DIRECTORY
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def test_send_skips_dicomdir_and_pynetdicom_stays_quiet(tmp_path: Path) -> None:
    export = tmp_path / "export"
    make_instances(export / "DICOM", 3)
    dicomdir = _dicomdir(export / "DICOMDIR")
    with running_node(tmp_path / "node") as node:
        sent = _ainode("send", "--quiet", "--to", node.peer, str(export))
        echoed = _ainode("echo", node.peer)
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.strip() == "sent 3, failed 0, skipped 1"
    assert f"skipped: {dicomdir}: a DICOMDIR" in sent.stderr
    assert echoed.returncode == 0, echoed.stderr
    for result in (sent, echoed):
        assert "pynetdicom" not in result.stderr
        assert "Association" not in result.stderr


def test_closed_pipe_ends_the_command_quietly(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    shutil.copyfile(FIXTURE, data / "ainode.sqlite3")
    connect(data / "ainode.sqlite3").close()  # migrated now: its log lines are not the point
    config = write_config(tmp_path, 1)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written: `| head` that quit
    try:
        result = subprocess.run(
            [sys.executable, "-m", "node", "jobs", "--config", str(config)],
            cwd=REPO,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert result.returncode == 128 + signal.SIGPIPE
    assert result.stderr == ""
