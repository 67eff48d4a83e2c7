"""Issue #17 with a real PACS: a re-sent study leaves one set of AI results per product.

Orthanc (``OverwriteInstances: true``, see README "Re-sends") C-STOREs the phantom chest CT to
``ainode serve`` and gets a SEG, a TID 1500 SR and a text SR back. Re-sending the identical
study makes no job and sends nothing; re-sending it with one changed slice re-runs the job,
whose results carry the same UIDs and replace the first ones at Orthanc.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import free_port, wait_until
from ingest_support import stop_node
from orthanc import Modality, orthanc_servers
from pydicom import dcmread
from pydicom.dataset import Dataset
from test_e2e_orthanc import (
    all_delivered,
    job_states,
    node_sections,
    query,
    result_uids,
    send_study_from_orthanc,
    start_node,
)

from node.config import load_node_config

pytestmark = [pytest.mark.orthanc, pytest.mark.dicom3tools]


@pytest.fixture
def orthanc_factory(tmp_path):
    yield from orthanc_servers(tmp_path)


@pytest.fixture
def phantom_ct(tmp_path) -> tuple[str, list[Path]]:
    from models.phantoms.chest_ct import ChestCTSpec, write_chest_ct

    _, paths = write_chest_ct(tmp_path / "phantom", ChestCTSpec.small(), uid_seed="ainode-resend")
    return str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID), paths


def results_at_orthanc(pacs, study: str, source_series: str, folder: Path) -> dict[str, Path]:
    """The study's AI results at Orthanc (the instances of every series but the source's),
    downloaded into ``folder``, by SOP Instance UID."""
    folder.mkdir(parents=True, exist_ok=True)
    found = {}
    for series in pacs.series_in_study(study):
        if series["MainDicomTags"]["SeriesInstanceUID"] == source_series:
            continue
        for item in pacs.get(f"/series/{series['ID']}/instances"):
            uid = item["MainDicomTags"]["SOPInstanceUID"]
            found[uid] = pacs.download(item["ID"], folder / f"{uid}.dcm")
    return found


def study_row(database: Path) -> tuple[str, int]:
    (row,) = query(database, "SELECT state, version FROM studies")
    return row["state"], row["version"]


def without_meta(path: Path) -> Dataset:
    ds = dcmread(path)
    ds.file_meta = None  # Orthanc may rewrite the File Meta; the dataset is what counts
    return ds


def test_resends_leave_one_set_of_results_the_newest(
    tmp_path, orthanc_factory, phantom_ct, validate_dicom
):
    study, paths = phantom_ct
    source_series = str(dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)
    port = free_port()
    pacs = orthanc_factory((Modality("ainode", "AINODE", "127.0.0.1", port),))
    node = start_node(tmp_path / "node", port, node_sections(tmp_path, pacs))
    outputs = load_node_config(node.config_path).storage.outputs_dir
    try:
        send_study_from_orthanc(pacs, paths)
        wait_until(lambda: all_delivered(node.database), timeout=120, what="first results sent")
        first = results_at_orthanc(pacs, study, source_series, tmp_path / "first")
        assert set(first) == set(result_uids(node.database))  # SEG, SR, text SR
        series_count = len(pacs.series_in_study(study))
        instance_count = len(pacs.instances_in_study(study))

        # 1. the identical study again: every C-STORE succeeds, the study stays version 1
        send_study_from_orthanc(pacs, paths)  # synchronous: each instance answered
        assert study_row(node.database) == ("stable", 1)
        assert job_states(node.database) == ["SUCCEEDED"]
        assert len(pacs.instances_in_study(study)) == instance_count

        # 2. one slice changed: version 2, the job again, its results replace the first
        changed = dcmread(paths[len(paths) // 2])
        pixels = changed.pixel_array.copy()
        pixels[:4, :4] += 1
        changed.PixelData = pixels.astype(changed.pixel_array.dtype).tobytes()
        changed_path = tmp_path / "changed.dcm"
        changed.save_as(changed_path, enforce_file_format=True)
        send_study_from_orthanc(pacs, [changed_path])  # Orthanc replaces it, sends the study
        wait_until(
            lambda: (
                job_states(node.database) == ["SUCCEEDED", "SUCCEEDED"]
                and all_delivered(node.database)
            ),
            timeout=120,
            what="the re-run's results sent",
        )
        assert study_row(node.database) == ("stable", 2)
        newest = results_at_orthanc(pacs, study, source_series, tmp_path / "newest")
        assert set(newest) == set(first) == set(result_uids(node.database))
        assert len(pacs.series_in_study(study)) == series_count
        assert len(pacs.instances_in_study(study)) == instance_count
        for uid, path in newest.items():
            (row,) = query(node.database, "SELECT path FROM results WHERE sop_instance_uid=?", uid)
            assert without_meta(path) == without_meta(outputs / row["path"]), uid
            assert without_meta(path) != without_meta(first[uid]), f"{uid} was not replaced"
        verdict = validate_dicom(*newest.values(), sources=(paths[0].parent,))
        assert verdict.returncode == 0, verdict.stdout[-3000:] + verdict.stderr[-2000:]
    finally:
        stop_node(node)
