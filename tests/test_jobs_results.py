"""The job's database ends: the work item (files, kinds, predecessor SR) and the one
transaction that stores results with their outbox rows."""

from __future__ import annotations

import pytest
from pipeline_rows import add_result, secondary_capture, seed_route_match, seed_series
from pydicom.uid import generate_uid

from node.config import NodeConfig
from node.db import connect
from node.dispatch.outbox import list_rows
from node.jobs import table
from node.jobs.results import store_results, work_item_for
from node.jobs.table import JobState
from node.jobs.work import ResultFile, WorkResult
from node.shared_types import OutputKind


@pytest.fixture
def site(tmp_path):
    config = NodeConfig.model_validate(
        {
            "storage": {"data_dir": str(tmp_path / "data")},
            "destinations": {
                "pacs": {
                    "kind": "dicom",
                    "ae_title": "PACS",
                    "host": "127.0.0.1",
                    "port": 104,
                    "send_as": ["seg", "sr"],
                },
                "reports": {"kind": "folder", "path": str(tmp_path / "r"), "send_as": ["text_sr"]},
            },
        }
    )
    conn = connect(config.storage.database_path)
    yield config, conn
    conn.close()


def claim(conn, config, study, series, destinations=("pacs",), new_version=True):
    seed_route_match(conn, study, series, destinations=destinations, new_version=new_version)
    table.create_jobs(conn)
    return table.claim_next(conn)


def test_work_item_has_the_series_files_and_the_kinds_destinations_take(site):
    config, conn = site
    study, series = generate_uid(), generate_uid()
    datasets = [secondary_capture(study, series, s) for s in range(3)]
    seed_series(conn, config.storage.spool_dir, datasets)
    job = claim(conn, config, study, series, ("pacs", "reports"))
    item = work_item_for(conn, job, config)
    assert sorted(p.name for p in item.files) == sorted(f"{d.SOPInstanceUID}.dcm" for d in datasets)
    assert all(p.is_file() for p in item.files)
    assert item.output_kinds == (OutputKind.SEG, OutputKind.SR, OutputKind.TEXT_SR)
    assert item.job_key == f"{study}/test-route/test-plugin"
    assert item.predecessor_sr is None


def test_unknown_destination_and_empty_series_are_refused(site):
    config, conn = site
    study, series = generate_uid(), generate_uid()
    job = claim(conn, config, study, series, ("pacs", "elsewhere"))
    with pytest.raises(ValueError, match="elsewhere"):
        work_item_for(conn, job, config)
    job = claim(conn, config, generate_uid(), generate_uid())
    with pytest.raises(ValueError, match="no stored instances"):
        work_item_for(conn, job, config)


def test_a_new_study_version_names_the_previous_sr(site):
    config, conn = site
    study, series = generate_uid(), generate_uid()
    seed_series(conn, config.storage.spool_dir, [secondary_capture(study, series)])
    first = claim(conn, config, study, series)
    sr = secondary_capture(study, generate_uid(), 5)
    add_result(conn, config.storage.outputs_dir, first.id, sr, (), kind="sr")
    table.mark_succeeded(conn, first.id, {}, 0)
    second = claim(conn, config, study, series)
    assert second.study_version == 2
    item = work_item_for(conn, second, config)
    assert item.predecessor_sr == (study, sr.SeriesInstanceUID, sr.SOPInstanceUID, sr.SOPClassUID)


def test_results_outbox_and_success_commit_together_or_not_at_all(site):
    config, conn = site
    study, series = generate_uid(), generate_uid()
    job = claim(conn, config, study, series, ("pacs", "reports"))
    files = tuple(
        ResultFile(generate_uid(), "1.2.840.10008.5.1.4.1.1.88.33", kind, f"job-1/{kind}.dcm")
        for kind in (OutputKind.SEG, OutputKind.SR, OutputKind.TEXT_SR)
    )
    result = WorkResult(job.id, files, {"inference": 1.0})
    table.cancel(conn, job.id)  # cancelled while it ran: nothing is stored
    assert store_results(conn, job, result, config) is False
    assert conn.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 0

    table.retry(conn, job.id)
    job = table.claim_next(conn)
    assert store_results(conn, job, result, config) is True
    rows = list_rows(conn, config.storage.outputs_dir)
    assert sorted((r.destination, r.kind) for r in rows) == [
        ("pacs", "seg"),
        ("pacs", "sr"),
        ("reports", "text_sr"),
    ]
    done = table.get_job(conn, job.id)
    assert (done.state, done.timings) == (JobState.SUCCEEDED, {"inference": 1.0})
