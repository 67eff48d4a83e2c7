"""Container products from a routed study to a real PACS, through ``ainode serve``.

* A MONAI Application Package writes its own SEG: the node validates it and relays it to
  Orthanc, once.
* A mercure-style module (dx-chest in an image) writes findings.json: the node builds SEG and
  TID 1500 SR from it; version 1 runs per job in production, version 2 (another image digest)
  warm in shadow on the same study, and ``ainode shadow report`` compares them.
* Broken images fail their jobs with the exit status and the log's last lines in
  ``ainode jobs``; a hung one is stopped at the job timeout; a ``kill -9`` of the node while
  a container runs leaves nothing behind after the restart, and the job completes once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, free_port, validator_path, wait_until
from container_support import (
    ENGINE,
    dx_chest_manifest,
    images_or_skip,
    owned_containers,
    write_manifest,
)
from ingest_support import stop_node
from orthanc import Modality, orthanc_servers
from pydicom import dcmread
from test_e2e_orthanc import all_delivered, query, start_node

from models.containers.plugin import container_owner
from node.scu import Peer, send

pytestmark = [pytest.mark.containers, pytest.mark.orthanc, pytest.mark.dicom3tools]

ROUTES = """
routes:
  - name: ct-lungs-map
    when: {modality: CT, body_part: chest}
    series: {orientation: axial, min_instances: 10, exclude_image_type: [LOCALIZER]}
    run: [lungs-map]
    send_to: [pacs]
  - name: cxr-box
    when: {modality: [CR, DX], body_part: chest}
    run: [dx-chest-box@1.0.0]
    send_to: [pacs]
  - name: cxr-box-candidate
    mode: shadow
    when: {modality: [CR, DX], body_part: chest}
    run: [dx-chest-box@2.0.0]
    send_to: [review]
"""

BROKEN_ROUTES = """
routes:
  - name: cxr-broken
    when: {modality: [CR, DX], body_part: chest}
    run: [broken-exit, broken-garbage, broken-hang]
    send_to: [results]
"""

KILL_ROUTES = """
routes:
  - name: cxr-box
    when: {modality: [CR, DX], body_part: chest}
    run: [dx-chest-box]
    send_to: [results]
"""


@pytest.fixture(scope="module")
def images():
    return images_or_skip()


@pytest.fixture
def orthanc_factory(tmp_path):
    yield from orthanc_servers(tmp_path)


def _sections(tmp_path: Path, routes: str, destinations: dict, **jobs) -> dict:
    (tmp_path / "routes.yaml").write_text(routes)
    return {
        "stability": {"stable_after_s": 1, "after_release_s": 0.2, "poll_interval_s": 0.1},
        "routes_file": str(tmp_path / "routes.yaml"),
        "plugin_dirs": [str(tmp_path / "plugins")],
        "jobs": {"workers": 2, "timeout_s": 120, "max_attempts": 2, "backoff_s": 0.5, **jobs},
        "destinations": destinations,
        "dispatch": {"backoff_s": 0.2, "backoff_max_s": 2, "max_attempts": 100},
        "containers": {**ENGINE, "validator": str(validator_path())},
    }


def _chest_xray(folder: Path, seed: int) -> Path:
    from models.phantoms.chest_xray import ChestXrayAnatomy, make_chest_xray

    folder.mkdir(parents=True, exist_ok=True)
    return make_chest_xray(folder, anatomy=ChestXrayAnatomy(ctr=0.56, seed=seed)).path


def _jobs(database: Path) -> list:
    return query(
        database,
        "SELECT m.plugin, m.plugin_version, j.state, j.attempts, j.error FROM jobs j "
        "JOIN route_matches m ON m.id = j.route_match_id ORDER BY j.id",
    )


def _finished(database: Path, count: int) -> bool:
    rows = _jobs(database)
    return len(rows) == count and all(r["state"] in ("SUCCEEDED", "FAILED") for r in rows)


def _ainode(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "node", *args], cwd=REPO, capture_output=True, text=True
    )
    return done.stdout + done.stderr


def test_map_and_mercure_products_reach_the_pacs_once_and_shadow_is_compared(
    tmp_path, images, orthanc_factory, validate_dicom
):
    from models.phantoms.chest_ct import ChestCTSpec, write_chest_ct

    plugins = tmp_path / "plugins"
    write_manifest(
        plugins,
        "lungs-map",
        "1.0.0",
        images["lungs-map"]["image"],
        input={"modalities": ["CT"], "dimensionality": "3d"},
        resources={"memory_mb": 2048},
    )
    dx_chest_manifest(plugins, images["dx-chest-mercure"]["image"])
    dx_chest_manifest(plugins, images["dx-chest-mercure-v2"]["image"], "2.0.0", lifecycle="warm")

    port = free_port()
    pacs = orthanc_factory((Modality("ainode", "AINODE", "127.0.0.1", port),))
    review = tmp_path / "review"
    destinations = {
        "pacs": {"kind": "dicom", "ae_title": pacs.ae_title, "host": "127.0.0.1",
                 "port": pacs.dicom_port, "timeout_s": 10},
        "review": {"kind": "folder", "path": str(review), "shadow": True},
    }  # fmt: skip
    node = start_node(tmp_path / "node", port, _sections(tmp_path, ROUTES, destinations))
    try:
        _, ct_paths = write_chest_ct(tmp_path / "ct", ChestCTSpec.small(), uid_seed="ct-map")
        xray = _chest_xray(tmp_path / "cxr", seed=7301)
        for path in [*ct_paths, xray]:
            pacs.upload(path)
        ct_study = str(dcmread(ct_paths[0], stop_before_pixels=True).StudyInstanceUID)
        cxr_study = str(dcmread(xray, stop_before_pixels=True).StudyInstanceUID)
        pacs.store_to("ainode", pacs.get("/studies"))
        wait_until(lambda: _finished(node.database, 3), timeout=300, what="three jobs finished")
        jobs = {(r["plugin"], r["plugin_version"]): r for r in _jobs(node.database)}
        assert {key: r["state"] for key, r in jobs.items()} == {
            ("lungs-map", None): "SUCCEEDED",
            ("dx-chest-box", "1.0.0"): "SUCCEEDED",
            ("dx-chest-box", "2.0.0"): "SUCCEEDED",
        }, [r["error"] for r in jobs.values()]
        wait_until(lambda: all_delivered(node.database), timeout=120, what="results delivered")

        # the MAP's own SEG, relayed as it wrote it, once
        ct_results = pacs.instances_in_study(ct_study)
        assert len(ct_results) == len(ct_paths) + 1
        sources = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in ct_paths}
        [seg] = [i for i in ct_results if i["MainDicomTags"]["SOPInstanceUID"] not in sources]
        seg_file = pacs.download(seg["ID"], tmp_path / "map-seg.dcm")
        assert dcmread(seg_file).Manufacturer == "ainode test MAP"
        # the mercure module's findings, built into the node's own SEG and TID 1500 SR
        kinds = query(
            node.database,
            "SELECT r.kind FROM results r JOIN jobs j ON j.id = r.job_id JOIN route_matches m "
            "ON m.id = j.route_match_id WHERE m.plugin_version = '1.0.0' ORDER BY r.kind",
        )
        assert [r["kind"] for r in kinds] == ["burned_in_sc", "seg", "sr"]
        cxr_results = pacs.instances_in_study(cxr_study)
        assert len(cxr_results) == 1 + len(kinds)  # the radiograph and each result once
        downloaded = [
            pacs.download(i["ID"], tmp_path / f"cxr-{n}.dcm") for n, i in enumerate(cxr_results)
        ]
        results = [p for p in downloaded if dcmread(p, stop_before_pixels=True).Modality != "DX"]
        verdict = validate_dicom(seg_file, *results, sources=(ct_paths[0].parent, xray.parent))
        assert verdict.returncode == 0, verdict.stdout[-3000:]
        # a per-job container's stdout/stderr is kept with its job, beside the results
        [log] = node.data_dir.rglob("job-*/container-dx-chest-box.log")
        assert "dx-chest 1.0.0: 1 files" in log.read_text()
        # the shadow version's results went to the review folder only, and are compared
        assert list(review.rglob("*.dcm"))
        report = _ainode("shadow", "report", "--config", str(node.config_path))
        assert "dx-chest-box@1.0.0" in report and "dx-chest-box@2.0.0" in report, report
        assert "1.000" in report, report  # the same network in both images: Dice 1
    finally:
        stop_node(node)
    assert not owned_containers(container_owner(node.data_dir))


def test_broken_images_fail_their_jobs_with_status_and_log(tmp_path, images):
    plugins = tmp_path / "plugins"
    for mode in ("exit", "garbage", "hang"):
        write_manifest(
            plugins,
            f"broken-{mode}",
            "1.0.0",
            images["broken"]["image"],
            container={"environment": {"BROKEN_MODE": mode}},
        )
    destinations = {"results": {"kind": "folder", "path": str(tmp_path / "results")}}
    sections = _sections(tmp_path, BROKEN_ROUTES, destinations, timeout_s=8, max_attempts=1)
    node = start_node(tmp_path / "node", free_port(), sections)
    try:
        send([_chest_xray(tmp_path / "cxr", seed=7302)], Peer("AINODE", "127.0.0.1", node.port))
        wait_until(lambda: _finished(node.database, 3), timeout=120, what="three jobs failed")
        errors = {r["plugin"]: (r["state"], r["error"]) for r in _jobs(node.database)}
        assert {plugin: state for plugin, (state, _) in errors.items()} == {
            "broken-exit": "FAILED",
            "broken-garbage": "FAILED",
            "broken-hang": "FAILED",
        }
        listed = _ainode("jobs", "--config", str(node.config_path))
        assert "container exited with status 3" in listed
        assert "model weights corrupt: checksum mismatch" in listed
        assert "product output refused" in errors["broken-garbage"][1] or (
            "not readable" in errors["broken-garbage"][1]
        )
        assert "did not finish within the job timeout" in errors["broken-hang"][1]
        owner = container_owner(node.data_dir)
        wait_until(lambda: not owned_containers(owner), timeout=30, what="containers removed")
        scratch = node.data_dir / "containers"
        assert not list(scratch.iterdir()) if scratch.exists() else True
        assert not list((tmp_path / "results").rglob("*.dcm"))
    finally:
        stop_node(node)


def test_kill_9_mid_run_leaves_nothing_and_the_job_completes_once(tmp_path, images):
    dx_chest_manifest(tmp_path / "plugins", images["dx-chest-mercure"]["image"])
    results = tmp_path / "results"
    destinations = {"results": {"kind": "folder", "path": str(results)}}
    sections = _sections(tmp_path, KILL_ROUTES, destinations)
    node = start_node(tmp_path / "node", free_port(), sections)
    owner = container_owner(node.data_dir)
    try:
        send([_chest_xray(tmp_path / "cxr", seed=7303)], Peer("AINODE", "127.0.0.1", node.port))
        scratch = node.data_dir / "containers"

        def running_job() -> list[str]:
            names = [n for n in owned_containers(owner) if not n.startswith("ainode-inspect")]
            return names if names and scratch.is_dir() and list(scratch.iterdir()) else []

        first = wait_until(running_job, timeout=120, what="the product's container running")
        os.kill(node.process.pid, signal.SIGKILL)
        node.process.wait(30)
        assert list(scratch.iterdir())  # the crash left its scratch folder (and container)

        port = node.port
        node = start_node(tmp_path / "node", port, sections)
        wait_until(
            lambda: not set(first) & set(owned_containers(owner)),
            timeout=30,
            what="the container of the killed node removed",
        )
        wait_until(lambda: _finished(node.database, 1), timeout=180, what="the job re-run")
        wait_until(lambda: all_delivered(node.database), timeout=60, what="results delivered")
        [job] = _jobs(node.database)
        assert job["state"] == "SUCCEEDED"
        uids = [r["sop_instance_uid"] for r in query(node.database, "SELECT * FROM results")]
        delivered = list(results.rglob("*.dcm"))
        assert len(delivered) == len(uids) == len(set(uids))  # once, nothing twice
        assert not list(scratch.iterdir())
        assert not owned_containers(owner)
    finally:
        stop_node(node)
