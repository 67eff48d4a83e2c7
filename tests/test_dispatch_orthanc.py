"""Dispatch to a real Orthanc: an outage is waited out, results arrive exactly once, and a
destination that never answers does not hold the PACS back."""

from __future__ import annotations

import socket

import pytest
from conftest import wait_until
from orthanc import orthanc_servers
from pipeline_rows import add_result, secondary_capture, seed_job
from pydicom.uid import generate_uid

from node.config import NodeConfig
from node.db import connect
from node.dispatch.dispatcher import Dispatcher
from node.dispatch.outbox import OutboxState, enqueue, list_rows

pytestmark = pytest.mark.orthanc


@pytest.fixture
def orthanc_factory(tmp_path):
    yield from orthanc_servers(tmp_path)


def _states(conn, outputs, destination):
    return [r for r in list_rows(conn, outputs) if r.destination == destination]


def test_outage_then_exactly_once(tmp_path, orthanc_factory):
    pacs = orthanc_factory()
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(8)
    config = NodeConfig.model_validate(
        {
            "storage": {"data_dir": str(tmp_path / "data")},
            "destinations": {
                "pacs": {
                    "kind": "dicom",
                    "ae_title": pacs.ae_title,
                    "host": "127.0.0.1",
                    "port": pacs.dicom_port,
                    "timeout_s": 10,
                },
                "stuck": {
                    "kind": "dicom",
                    "ae_title": "STUCK",
                    "host": "127.0.0.1",
                    "port": hole.getsockname()[1],
                    "timeout_s": 120,
                },
            },
            "dispatch": {"backoff_s": 0.2, "backoff_max_s": 1, "max_attempts": 1000},
        }
    )
    outputs = config.storage.outputs_dir
    conn = connect(config.storage.database_path)
    study, series = generate_uid(), generate_uid()
    dispatcher = Dispatcher(config)
    dispatcher.start()
    try:
        pacs.stop()
        job_id = seed_job(conn, study, series)
        datasets = [secondary_capture(study, series, seed) for seed in range(4)]
        for ds in datasets:
            add_result(conn, outputs, job_id, ds, ("pacs", "stuck"), kind="sc")
        dispatcher.wake()
        wait_until(
            lambda: all(r.attempts >= 2 for r in _states(conn, outputs, "pacs")),
            timeout=30,
            what="failed attempts while the PACS is down",
        )
        assert {r.state for r in _states(conn, outputs, "pacs")} == {OutboxState.PENDING}

        pacs.start()
        wait_until(
            lambda: {r.state for r in _states(conn, outputs, "pacs")} == {OutboxState.SENT},
            timeout=60,
            what="delivery after the PACS came back",
        )
        expected = sorted(ds.SOPInstanceUID for ds in datasets)
        assert sorted(pacs.instance_uids(study)) == expected
        # the hanging destination is still in its first attempt; it delayed nothing
        assert {(r.state, r.attempts) for r in _states(conn, outputs, "stuck")} == {
            (OutboxState.PENDING, 0)
        }

        # a re-run job owes the same UIDs again: the PACS replaces, the count stays exact
        for ds in datasets:
            enqueue(conn, ds.SOPInstanceUID, "pacs", 0)
        dispatcher.wake()
        wait_until(
            lambda: {r.state for r in _states(conn, outputs, "pacs")} == {OutboxState.SENT},
            timeout=60,
            what="re-delivery",
        )
        assert sorted(pacs.instance_uids(study)) == expected
        assert pacs.statistics()["CountInstances"] == len(expected)
    finally:
        hole.close()
        dispatcher.stop()
        conn.close()
