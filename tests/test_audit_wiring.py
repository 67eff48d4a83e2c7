"""The node's parts tell the audit trail: routes reloads, result deliveries, vendor sends."""

from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest
from audit_support import check_message
from pipeline_rows import add_result, secondary_capture, seed_job
from pydicom.uid import CTImageStorage, SecondaryCaptureImageStorage, generate_uid

from node.audit.cli import read_records
from node.audit.events import EventKind, Outcome
from node.audit.messages import AuditSource
from node.audit.trail import AuditTrail
from node.config import NodeConfig
from node.db import connect, transaction
from node.destination_settings import FolderDestination
from node.dispatch.dispatcher import DestinationSender, destination_party
from node.jobs.executor import LocalExecutor
from node.jobs.table import get_job
from node.jobs.work import WorkResult
from node.routing.stage import audit_reloads
from node.shared_types import RetryPolicy
from node.vendors.send import _audit_events
from routers.check import RoutesFileError
from routers.reload import LiveRouteTable

SOURCE = AuditSource(ae_title="AINODE", source_id="AINODE")


@pytest.fixture
def trail(tmp_path: Path):
    trail = AuditTrail(tmp_path / "audit.log", SOURCE)
    yield trail
    trail.close()


def _records(trail: AuditTrail) -> list[dict]:
    trail.close()
    assert trail.path is not None
    records = list(read_records(trail.path))
    for record in records:
        check_message(record["xml"])
    return records


def test_a_routes_reload_taken_or_refused_is_a_configuration_change(tmp_path, trail) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text("good")

    def loader(path: Path):
        if path.read_text() != "good":
            raise RoutesFileError([])
        return SimpleNamespace(routes=())

    table = LiveRouteTable(routes, loader, audit_reloads(trail))
    assert table.reload()
    routes.write_text("broken")
    assert not table.reload()
    records = _records(trail)
    assert [(r["kind"], r["outcome"]) for r in records] == [
        (EventKind.CONFIGURATION_CHANGED, Outcome.SUCCESS),
        (EventKind.CONFIGURATION_CHANGED, Outcome.MINOR_FAILURE),
    ]
    assert routes.absolute().as_uri() in records[0]["xml"]


class _HalfRefused:
    """Delivers the first row, refuses the rest."""

    def deliver(self, rows):
        return {row.id: None if i == 0 else "peer refused it" for i, row in enumerate(rows)}


def test_each_batch_is_audited_per_study_and_outcome(tmp_path, trail) -> None:
    conn = connect(tmp_path / "db.sqlite3")
    study, series = generate_uid(), generate_uid()
    job_id = seed_job(conn, study, series)
    with transaction(conn):
        conn.execute("UPDATE studies SET patient_id = 'DISPATCH-1'")
    outputs = tmp_path / "outputs"
    for seed in range(3):
        add_result(conn, outputs, job_id, secondary_capture(study, series, seed), ("pacs",), "sc")
    party = destination_party("pacs", None)
    sender = DestinationSender(
        "pacs",
        _HalfRefused(),
        tmp_path / "db.sqlite3",
        outputs,
        RetryPolicy(max_attempts=3, backoff_s=1, backoff_max_s=1),
        audit=trail,
        peer=party,
    )
    assert sender.send_due(conn)
    conn.close()
    records = _records(trail)
    assert [(r["kind"], r["outcome"]) for r in records] == [
        (EventKind.INSTANCES_SENT, Outcome.SUCCESS),
        (EventKind.INSTANCES_SENT, Outcome.MINOR_FAILURE),
    ]
    assert all(r["study_uids"] == [study] and r["ae_titles"] == ["pacs"] for r in records)
    assert "DISPATCH-1" in records[0]["xml"] and SecondaryCaptureImageStorage in records[0]["xml"]
    assert 'NumberOfInstances="2"' in records[1]["xml"] and "peer refused it" in records[1]["xml"]


def test_destination_parties() -> None:
    folder = FolderDestination(path=Path("/srv/results"))
    assert destination_party("archive", folder).user_id == "/srv/results"
    assert destination_party("other", None).user_id == "other"


@pytest.fixture
def series_files(tmp_path: Path) -> tuple[Path, ...]:
    from tests.ingest_support import make_instances

    return tuple(make_instances(tmp_path / "series", 2))


def _vendor(**spec) -> SimpleNamespace:
    return SimpleNamespace(vendor=SimpleNamespace(**spec), key="vendor-ai@1.0")


def test_a_vendor_send_is_begun_then_sent_or_failed(series_files) -> None:
    item = SimpleNamespace(study_instance_uid=generate_uid(), files=series_files)
    manifest = _vendor(stowrs_url=None, ae_title="VENDOR", host="10.2.2.2")
    begun, failed = _audit_events(item, manifest, 1.0, "vendor VENDOR unreachable")
    assert begun.kind == EventKind.TRANSFER_BEGUN and begun.at == 1.0
    assert failed.kind == EventKind.INSTANCES_SENT and failed.outcome == Outcome.MINOR_FAILURE
    assert failed.study.sop_classes == ((CTImageStorage, 2),)
    assert failed.study.patient_id == "SYNTH-001"
    assert failed.ae_titles == ("VENDOR", "vendor-ai@1.0")
    result = WorkResult(7, audit=(begun, failed))  # crosses the process boundary
    assert pickle.loads(pickle.dumps(result)) == result


def test_the_executor_records_what_a_worker_audited(tmp_path, trail, series_files) -> None:
    config = NodeConfig.model_validate({"storage": {"data_dir": str(tmp_path / "data")}})
    config.storage.data_dir.mkdir()
    conn = connect(config.storage.database_path)
    job_id = seed_job(conn, generate_uid(), generate_uid())
    job = get_job(conn, job_id)
    assert job is not None
    item = SimpleNamespace(study_instance_uid=job.study_instance_uid, files=series_files)
    manifest = _vendor(stowrs_url="https://vendor.example/dicom-web/studies")
    events = _audit_events(item, manifest, 1.0, "vendor down")
    executor = LocalExecutor(config, audit=trail)
    executor._finish(conn, job, WorkResult(job_id, error="down", retryable=True, audit=events))
    conn.close()
    records = _records(trail)
    assert [r["kind"] for r in records] == [EventKind.TRANSFER_BEGUN, EventKind.INSTANCES_SENT]
    assert records[1]["ae_titles"] == ["https://vendor.example/dicom-web/studies", "vendor-ai@1.0"]
