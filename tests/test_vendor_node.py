"""``runner: dicom-node`` with a real vendor node: a second ``ainode serve`` running the
ct-lung-nodule reference plugin, which sends its SEG and SRs back to the first node.

The first node relays them to Orthanc exactly once, validated, without routing them as a new
study; a vendor that is down at first still gets the series later and its results arrive
once; a vendor that never answers fails the job after ``result_timeout_s``, and a result that
comes later is kept and shown by ``ainode vendors``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, free_port, wait_until
from ingest_support import stop_node
from orthanc import Modality, orthanc_servers
from pydicom import dcmread
from pydicom.uid import generate_uid
from test_e2e_orthanc import all_delivered, query, start_node

from node.scu import Peer, send

pytestmark = [pytest.mark.orthanc, pytest.mark.dicom3tools]

ROUTE_TO_VENDOR = """
routes:
  - name: ct-vendor
    when: {modality: CT, body_part: chest}
    series: {orientation: axial, min_instances: 10, exclude_image_type: [LOCALIZER]}
    run: [vendor-lungs]
    send_to: [pacs]
"""

VENDOR_ROUTES = """
routes:
  - name: ct-lungs
    when: {modality: CT, body_part: chest}
    series: {orientation: axial, min_instances: 10, exclude_image_type: [LOCALIZER]}
    run: [ct-lung-nodule]
    send_to: [back]
"""

STABLE = {"stable_after_s": 1, "after_release_s": 0.2, "poll_interval_s": 0.1}


@pytest.fixture
def orthanc_factory(tmp_path):
    yield from orthanc_servers(tmp_path)


@pytest.fixture(scope="module")
def chest_ct(tmp_path_factory) -> list[Path]:
    from models.phantoms.chest_ct import ChestCTSpec, write_chest_ct

    folder = tmp_path_factory.mktemp("ct")
    return write_chest_ct(folder, ChestCTSpec.small(), uid_seed="vendor-node-ct")[1]


def _vendor_manifest(plugins: Path, vendor_port: int, **vendor) -> None:
    folder = plugins / "vendor-lungs"
    folder.mkdir(parents=True, exist_ok=True)
    spec = {
        "ae_title": "VENDORB",
        "host": "127.0.0.1",
        "port": vendor_port,
        "results_from": "VENDORB",
        "quiet_s": 2,
        "result_timeout_s": 120,
        **vendor,
    }
    lines = "\n".join(f"  {key}: {value}" for key, value in spec.items())
    (folder / "plugin.yaml").write_text(
        f"name: vendor-lungs\nversion: 1.0.0\nrunner: dicom-node\nvendor:\n{lines}\n"
    )


def _our_node(tmp_path: Path, port: int, destination: dict) -> tuple[Path, dict]:
    (tmp_path / "routes.yaml").write_text(ROUTE_TO_VENDOR)
    return tmp_path / "ours", {
        "stability": STABLE,
        "routes_file": str(tmp_path / "routes.yaml"),
        "plugin_dirs": [str(tmp_path / "plugins")],
        "jobs": {"workers": 1, "timeout_s": 120, "max_attempts": 5, "backoff_s": 1},
        "destinations": {"pacs": destination},
        "dispatch": {"backoff_s": 0.2, "backoff_max_s": 2, "max_attempts": 100},
    }


def _vendor_node(tmp_path: Path, port: int, our_port: int, routes: str) -> object:
    (tmp_path / "vendor-routes.yaml").write_text(routes)
    sections = {
        # the vendor answers with its own AE title as the calling AE (dispatch below)
        "listener": {"ae_title": "VENDORB", "host": "127.0.0.1", "port": port},
        "stability": STABLE,
        "routes_file": str(tmp_path / "vendor-routes.yaml"),
        "plugin_dirs": [str(REPO / "models" / "plugins")],
        "jobs": {"workers": 1, "timeout_s": 300, "max_attempts": 2, "backoff_s": 0.5},
        "destinations": {
            "back": {
                "kind": "dicom",
                "ae_title": "AINODE",
                "host": "127.0.0.1",
                "port": our_port,
                "timeout_s": 10,
            },
        },
        "dispatch": {
            "backoff_s": 0.2,
            "backoff_max_s": 2,
            "max_attempts": 100,
            "calling_ae_title": "VENDORB",
        },
    }
    return start_node(tmp_path / "vendor", port, sections)


def _jobs(database: Path) -> list:
    return query(database, "SELECT id, state, attempts, error FROM jobs ORDER BY id")


def _ainode(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "node", *args], cwd=REPO, capture_output=True, text=True
    )
    return done.stdout + done.stderr


def test_a_vendor_node_results_reach_the_pacs_once(
    tmp_path, orthanc_factory, chest_ct, validate_dicom
):
    our_port, vendor_port = free_port(), free_port()
    pacs = orthanc_factory((Modality("ainode", "AINODE", "127.0.0.1", our_port),))
    _vendor_manifest(tmp_path / "plugins", vendor_port)
    folder, sections = _our_node(
        tmp_path,
        our_port,
        {"kind": "dicom", "ae_title": pacs.ae_title, "host": "127.0.0.1",
         "port": pacs.dicom_port, "timeout_s": 10},
    )  # fmt: skip
    ours = start_node(folder, our_port, sections)
    vendor = None
    try:
        send(chest_ct, Peer("AINODE", "127.0.0.1", our_port))
        # the vendor is down: the attempt fails and the job waits for its next try
        wait_until(
            lambda: any("unreachable" in (j["error"] or "") for j in _jobs(ours.database)),
            timeout=120,
            what="a failed attempt while the vendor is down",
        )
        vendor = _vendor_node(tmp_path, vendor_port, our_port, VENDOR_ROUTES)
        wait_until(
            lambda: [j["state"] for j in _jobs(ours.database)] == ["SUCCEEDED"],
            timeout=300,
            what="the vendor's results relayed",
        )
        wait_until(lambda: all_delivered(ours.database), timeout=60, what="results at Orthanc")
        study = str(dcmread(chest_ct[0], stop_before_pixels=True).StudyInstanceUID)
        results = query(ours.database, "SELECT sop_instance_uid, kind FROM results")
        # the vendor's SEG, TID 1500 SR and report (an Enhanced SR, so relayed as an SR)
        assert sorted(r["kind"] for r in results) == ["seg", "sr", "sr"]
        at_pacs = pacs.instances_in_study(study)
        assert len(at_pacs) == len(results)  # each result once, and nothing else
        files = [pacs.download(i["ID"], tmp_path / f"r{n}.dcm") for n, i in enumerate(at_pacs)]
        verdict = validate_dicom(*files, sources=(chest_ct[0].parent,))
        assert verdict.returncode == 0, verdict.stdout[-3000:]
        # the results were not taken for a new version of the study, nor routed again
        versions = query(ours.database, "SELECT COUNT(*) AS n FROM study_versions")[0]["n"]
        assert versions == 1 and len(_jobs(ours.database)) == 1
        listed = _ainode("vendors", "--config", str(ours.config_path))
        assert "SUCCEEDED" in listed and "relayed 3" in listed, listed
    finally:
        stop_node(ours)
        if vendor is not None:
            stop_node(vendor)


def test_a_vendor_that_never_answers_fails_the_job_and_a_late_answer_is_kept(tmp_path, chest_ct):
    our_port, vendor_port = free_port(), free_port()
    _vendor_manifest(tmp_path / "plugins", vendor_port, result_timeout_s=6)
    results = tmp_path / "results"
    folder, sections = _our_node(tmp_path, our_port, {"kind": "folder", "path": str(results)})
    vendor = _vendor_node(tmp_path, vendor_port, our_port, "routes: []\n")
    ours = start_node(folder, our_port, sections)
    try:
        send(chest_ct, Peer("AINODE", "127.0.0.1", our_port))
        wait_until(
            lambda: [j["state"] for j in _jobs(ours.database)] == ["FAILED"],
            timeout=120,
            what="the job failed for want of results",
        )
        [job] = _jobs(ours.database)
        assert "sent no results within 6 s" in job["error"]
        # a late answer from the vendor: kept in its inbox, shown, not relayed
        late = dcmread(chest_ct[0])
        late.SeriesInstanceUID, late.SOPInstanceUID = generate_uid(), generate_uid()
        late.file_meta.MediaStorageSOPInstanceUID = late.SOPInstanceUID
        late_path = tmp_path / "late.dcm"
        late.save_as(late_path, enforce_file_format=True)
        report = send([late_path], Peer("AINODE", "127.0.0.1", our_port), calling_ae="VENDORB")
        assert report.ok
        listed = _ainode("vendors", "--config", str(ours.config_path))
        assert f"kept   NEW       {late.SOPInstanceUID} from VENDORB" in listed, listed
        assert f"(job {job['id']})" in listed
        assert not list(results.rglob("*.dcm"))
        assert len(_jobs(ours.database)) == 1  # the late answer was not routed
    finally:
        stop_node(ours)
        stop_node(vendor)


def _identifiers(paths: list[Path]) -> set[bytes]:
    """What must not leave: patient name, ID, birth date and every UID of the series."""
    found: set[bytes] = set()
    for path in paths:
        ds = dcmread(path, stop_before_pixels=True)
        found |= {str(ds.PatientName).encode(), str(ds.PatientID).encode()}
        if ds.get("PatientBirthDate"):
            found.add(str(ds.PatientBirthDate).encode())
        for keyword in (
            "StudyInstanceUID",
            "SeriesInstanceUID",
            "SOPInstanceUID",
            "FrameOfReferenceUID",
        ):
            if ds.get(keyword):
                found.add(str(ds.get(keyword)).encode())
    return {value for value in found if value}


def test_an_external_vendor_gets_pseudonyms_and_the_results_come_back_identified(
    tmp_path, chest_ct
):
    our_port, vendor_port = free_port(), free_port()
    _vendor_manifest(tmp_path / "plugins", vendor_port, deidentify="true")
    results = tmp_path / "results"
    folder, sections = _our_node(tmp_path, our_port, {"kind": "folder", "path": str(results)})
    vendor = _vendor_node(tmp_path, vendor_port, our_port, VENDOR_ROUTES)
    ours = start_node(folder, our_port, sections)
    try:
        send(chest_ct, Peer("AINODE", "127.0.0.1", our_port))
        wait_until(
            lambda: [j["state"] for j in _jobs(ours.database)] == ["SUCCEEDED"],
            timeout=300,
            what="the vendor's results relayed",
        )
        wait_until(lambda: all_delivered(ours.database), timeout=60, what="results delivered")
        # what the vendor received: none of the originals, anywhere in the bytes
        received = list((tmp_path / "vendor" / "data" / "spool").rglob("*.dcm"))
        assert len(received) == len(chest_ct)
        secrets = _identifiers(chest_ct)
        leaked = [p.name for p in received for s in secrets if s in p.read_bytes()]
        assert leaked == []
        # what the PACS gets: the original patient and study, references to the originals
        source = dcmread(chest_ct[0], stop_before_pixels=True)
        originals = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in chest_ct}
        delivered = [dcmread(p) for p in results.rglob("*.dcm")]
        assert len(delivered) == 3
        for ds in delivered:
            assert ds.StudyInstanceUID == source.StudyInstanceUID
            assert (ds.PatientID, str(ds.PatientName)) == (
                source.PatientID,
                str(source.PatientName),
            )
        seg = next(ds for ds in delivered if ds.Modality == "SEG")
        referenced = {
            item.ReferencedSOPInstanceUID
            for series in seg.ReferencedSeriesSequence
            for item in series.ReferencedInstanceSequence
        }
        assert referenced and referenced <= originals
    finally:
        stop_node(ours)
        stop_node(vendor)


def test_a_vendor_reached_by_stow_rs_receives_the_series(tmp_path, orthanc_factory, chest_ct):
    vendor = orthanc_factory(dicomweb=True)  # a vendor endpoint that only takes STOW-RS
    token = tmp_path / "vendor.token"
    token.write_text("not-a-secret-for-orthanc\n")
    folder = tmp_path / "plugins" / "vendor-lungs"
    folder.mkdir(parents=True)
    (folder / "plugin.yaml").write_text(
        "name: vendor-lungs\nversion: 1.0.0\nrunner: dicom-node\nvendor:\n"
        f"  stowrs_url: {vendor.stow_url}\n  token_file: {token}\n"
        "  results_from: VENDORB\n  result_timeout_s: 4\n"
    )
    our_port = free_port()
    results = tmp_path / "results"
    node_folder, sections = _our_node(tmp_path, our_port, {"kind": "folder", "path": str(results)})
    ours = start_node(node_folder, our_port, sections)
    try:
        send(chest_ct, Peer("AINODE", "127.0.0.1", our_port))
        wait_until(
            lambda: [j["state"] for j in _jobs(ours.database)] == ["FAILED"],
            timeout=120,
            what="the series sent, and no results in time",
        )
        study = str(dcmread(chest_ct[0], stop_before_pixels=True).StudyInstanceUID)
        assert len(vendor.instances_in_study(study)) == len(chest_ct)
        [request] = query(ours.database, "SELECT instances_sent FROM vendor_requests")
        assert request["instances_sent"] == len(chest_ct)
    finally:
        stop_node(ours)
