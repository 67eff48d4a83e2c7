"""The ingest suite's key tests again in the storage modes that are not the default.

``AINODE_TEST_STORAGE`` (``tests.ingest_support.STORAGE_MODE_ENV``) gives every node a test
starts its storage settings, so the tests below are the suite's own, unchanged, run with
``storage.durability: os`` and with ``storage.journal`` in both durabilities (1 MiB segments,
so they roll and retire), and with four receiver processes (``listener.processes: 4``): the
corpus through DCMTK, malformed files, eight storescu at once,
a kill -9 mid-send, duplicates, the disk watermark, the status page. The whole suite runs
the same way with the variable set by hand.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

import node.ingest.spool as spool_module
import tests.test_ingest_corpus as corpus_tests
import tests.test_ingest_load as load_tests
import tests.test_ingest_scp as scp_tests
import tests.test_status as status_tests
from node.ingest.journal_format import Durability
from node.ingest.spool import Spool, instance_relpath
from node.scu import Peer, send
from tests.conftest import free_port, wait_until
from tests.ingest_support import (
    LISTENER_MODE_ENV,
    STORAGE_MODE_ENV,
    make_instances,
    running_node,
)

#: node.yaml ``storage:`` settings per mode, beyond the default (fsync, a file per instance).
MODES = {
    "os": "durability: os",
    "journal": "{journal: true, journal_segment_mb: 1}",
    "journal-os": "{journal: true, durability: os, journal_segment_mb: 1}",
    "receivers-4": "{journal: true, journal_segment_mb: 1}",
    "receivers-4-os": "{journal: true, durability: os, journal_segment_mb: 1}",
}
#: node.yaml ``listener:`` settings per mode, beyond the default (one process).
LISTENER_MODES = {"receivers-4": "processes: 4", "receivers-4-os": "processes: 4"}


#: The suite's tests re-run in each mode: (test function, the fixtures it takes after
#: ``tmp_path``, its markers).
_DCMTK, _CORPUS = pytest.mark.dcmtk, pytest.mark.corpus
SUITE = [
    pytest.param(function, fixtures, id=name, marks=marks)
    for name, function, fixtures, marks in (
        (
            "corpus",
            corpus_tests.test_dcmtk_storescu_stores_every_sendable_corpus_file_as_sent,
            ("corpus", "dcmtk"),
            (_DCMTK, _CORPUS),
        ),
        (
            "malformed",
            corpus_tests.test_every_malformed_file_gets_an_answer_and_nothing_half_written,
            ("corpus", "dcmtk"),
            (_DCMTK, _CORPUS),
        ),
        (
            "eight-storescu",
            load_tests.test_eight_simultaneous_storescu_store_all_800_with_an_exact_index,
            ("dcmtk",),
            (_DCMTK,),
        ),
        (
            "kill-9",
            load_tests.test_kill_9_mid_send_loses_nothing_acknowledged_and_the_rest_completes_the_study,
            ("dcmtk",),
            (_DCMTK,),
        ),
        (
            "duplicates",
            scp_tests.test_duplicate_replaces_file_and_row_and_reopens_the_study,
            (),
            (),
        ),
        (
            "watermark",
            scp_tests.test_below_the_disk_watermark_answers_out_of_resources_and_writes_nothing,
            ("dcmtk",),
            (_DCMTK,),
        ),
        ("status", status_tests.test_status_and_metrics_count_what_was_stored, (), ()),
    )
]


#: Cases that run only with the slow tests (``make test-slow``), so the suite keeps to its
#: 25 minutes: the ``os`` modes whole (the suite keeps ``fsync``, the journal and four
#: receivers), and the long corpus sweeps in every mode.
SLOW_MODES = {"os", "journal-os", "receivers-4-os"}
SLOW_CASES = {"corpus", "malformed"}
#: (case, mode) pairs beyond those: the node's kill -9 with receivers (the suite kills a
#: receiver in ``test_ingest_crash``).
SLOW_PAIRS = {("kill-9", "receivers-4")}


def _cases() -> list:
    cases = []
    for mode in sorted(MODES):
        for case in SUITE:
            slow = mode in SLOW_MODES or case.id in SLOW_CASES or (case.id, mode) in SLOW_PAIRS
            marks = (*case.marks, pytest.mark.slow) if slow else case.marks
            cases.append(pytest.param(mode, *case.values, id=f"{case.id}-{mode}", marks=marks))
    return cases


@pytest.mark.parametrize(("mode", "test", "fixtures"), _cases())
def test_suite_in_mode(
    mode: str,
    test: Callable[..., None],
    fixtures: tuple[str, ...],
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(STORAGE_MODE_ENV, MODES[mode])
    if mode in LISTENER_MODES:
        monkeypatch.setenv(LISTENER_MODE_ENV, LISTENER_MODES[mode])
    test(tmp_path, *(request.getfixturevalue(name) for name in fixtures))


def test_os_mode_writes_without_any_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[object] = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd))
    monkeypatch.setattr(spool_module, "fsync_dir", lambda path: synced.append(path))
    spool = Spool(tmp_path / "spool", 0, Durability.OS)
    relpath = instance_relpath("1.2", "1.2.3", "1.2.3.4")
    assert spool.write(relpath, (b"meta", b"data")) == 8
    assert spool.write(relpath, (b"again",)) == 5  # a duplicate: replaced atomically
    spool.remove(relpath)
    assert synced == [] and not list(spool.files())
    durable = Spool(tmp_path / "durable", 0)
    durable.write(relpath, (b"meta",))
    assert len(synced) >= 3  # the file, the new folders, the series folder


def _status(http_port: int) -> dict:
    url = f"http://127.0.0.1:{http_port}/status"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_status_and_start_up_log_say_which_durability(tmp_path: Path) -> None:
    http_port = free_port()
    files = make_instances(tmp_path / "in", 2)
    for durability, journal in (("fsync", False), ("os", True)):
        folder = tmp_path / durability
        storage = {"durability": durability, "journal": journal}
        with running_node(folder, storage=storage, http={"port": http_port}) as node:
            assert send(files, Peer("AINODE", "127.0.0.1", node.port)).ok
            body = wait_until(
                lambda: (s := _status(http_port))["instances"] == 2 and s, what="2 stored"
            )
            assert (body["durability"], body["journal"]) == (durability, journal)
            log = node.log()
        assert f"storage.durability: {durability} (a Success means" in log
        assert ("a Success waits for the journal" in log) is journal
