"""A destination's ``viewer_profile`` picks what it receives per source kind: an OHIF
destination gets burned-in captures and no SEG for a radiograph (OHIF 3.13 crashes on a SEG
over one) and SEG + SR + text SR for a CT; one job builds what all its destinations take and
each gets only its own kinds; an explicit ``send_as`` wins; node.yaml refuses what cannot work.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from outputs_support import write_synthetic_ct
from pipeline_rows import secondary_capture, seed_route_match, seed_series
from pydicom import dcmread
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
    generate_uid,
)
from runtime_support import write_plugin

from models.phantoms.chest_xray import make_chest_xray
from node.cli import main
from node.config import ConfigError, NodeConfig, load_node_config
from node.db import connect
from node.dispatch.dispatcher import Dispatcher
from node.dispatch.outbox import list_rows
from node.jobs import table
from node.jobs.results import source_kind_of, store_results, work_item_for
from node.jobs.work import ResultFile, WorkResult
from node.jobs.worker import PipelineRunner
from node.shared_types import OutputKind, SourceKind, ViewerProfile

SEG, SR, TEXT_SR, SC = (
    OutputKind.SEG,
    OutputKind.SR,
    OutputKind.TEXT_SR,
    OutputKind.BURNED_IN_SC,
)
ALL_KINDS = (SEG, SR, TEXT_SR, SC)

# A python plugin whose findings fill every output kind (segments, measurements, report).
FULL = """
    from outputs_support import full_findings

    class Full:
        def __init__(self, manifest):
            self.name, self.version = manifest.name, manifest.version
        def load(self, device):
            pass
        def run(self, series):
            return full_findings(series)
"""


def folder(tmp_path, name, **fields):
    return {"kind": "folder", "path": str(tmp_path / name), **fields}


@pytest.fixture
def site(tmp_path):
    plugins = tmp_path / "plugins"
    write_plugin(plugins / "full", name="full", entry="plugin:Full", code=FULL)
    config = NodeConfig.model_validate(
        {
            "storage": {"data_dir": str(tmp_path / "data")},
            "plugin_dirs": [str(plugins)],
            "destinations": {
                "ohif": folder(tmp_path, "ohif", viewer_profile="ohif"),
                "pacs": {"kind": "dicom", "ae_title": "PACS", "host": "127.0.0.1", "port": 104},
                "ohif-seg": folder(tmp_path, "ohif-seg", viewer_profile="ohif", send_as=["seg"]),
                "archive": folder(tmp_path, "archive", send_as=["seg", "sr"]),
            },
        }
    )
    conn = connect(config.storage.database_path)
    yield config, conn
    conn.close()


def image(modality: str, sop_class: str):
    study, series = generate_uid(), generate_uid()
    ds = secondary_capture(study, series)
    ds.Modality = modality
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    return ds


def claim(conn, config, datasets, destinations, plugin="test-plugin"):
    seed_series(conn, config.storage.spool_dir, datasets)
    first = datasets[0]
    seed_route_match(
        conn,
        first.StudyInstanceUID,
        first.SeriesInstanceUID,
        plugin=plugin,
        destinations=destinations,
    )
    table.create_jobs(conn)
    return table.claim_next(conn)


def owed(conn, config) -> dict[str, set[str]]:
    """Destination -> the result kinds the outbox owes it."""
    by_destination: dict[str, set[str]] = {}
    for row in list_rows(conn, config.storage.outputs_dir):
        by_destination.setdefault(row.destination, set()).add(row.kind)
    return by_destination


def store_every_kind(conn, config, job) -> None:
    """Store one result of every kind, as if the worker had built them all."""
    files = tuple(
        ResultFile(generate_uid(), SecondaryCaptureImageStorage, kind, f"job-{job.id}/{kind}.dcm")
        for kind in ALL_KINDS
    )
    assert store_results(conn, job, WorkResult(job.id, files), config)


DX = ("DX", DigitalXRayImageStorageForPresentation)
CT = ("CT", CTImageStorage)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (DX, SourceKind.RADIOGRAPH),
        (("OT", ComputedRadiographyImageStorage), SourceKind.RADIOGRAPH),  # the class decides
        (("MG", SecondaryCaptureImageStorage), SourceKind.RADIOGRAPH),  # the modality decides
        (CT, SourceKind.CROSS_SECTIONAL),
        (("MR", SecondaryCaptureImageStorage), SourceKind.CROSS_SECTIONAL),
    ],
)
def test_the_source_kind_comes_from_the_series_modality_or_sop_class(site, source, expected):
    config, conn = site
    job = claim(conn, config, [image(*source)], ("pacs",))
    assert source_kind_of(conn, job) is expected


@pytest.mark.parametrize(
    ("destination", "source", "expected"),
    [
        ("ohif", DX, (SR, TEXT_SR, SC)),
        ("ohif", CT, (SEG, SR, TEXT_SR)),
        ("pacs", DX, (SEG, SR, TEXT_SR, SC)),
        ("pacs", CT, (SEG, SR, TEXT_SR)),
        ("ohif-seg", DX, (SEG,)),  # an explicit send_as wins over the profile
        ("archive", CT, (SEG, SR)),
    ],
)
def test_each_destination_gets_its_profiles_kinds_for_the_source(
    site, destination, source, expected
):
    config, conn = site
    job = claim(conn, config, [image(*source)], (destination,))
    assert work_item_for(conn, job, config).output_kinds == expected
    store_every_kind(conn, config, job)
    assert owed(conn, config) == {destination: {kind.value for kind in expected}}


def test_one_job_builds_the_union_and_each_destination_gets_its_own_kinds(site):
    config, conn = site
    job = claim(conn, config, [image(*DX)], ("ohif", "archive"))
    assert work_item_for(conn, job, config).output_kinds == (SR, TEXT_SR, SC, SEG)
    store_every_kind(conn, config, job)
    assert owed(conn, config) == {
        "ohif": {"sr", "text_sr", "burned_in_sc"},
        "archive": {"seg", "sr"},
    }


def test_a_job_without_destinations_builds_what_a_generic_viewer_gets(site):
    config, conn = site
    job = claim(conn, config, [image(*DX)], ())
    assert work_item_for(conn, job, config).output_kinds == (SEG, SR, TEXT_SR, SC)


def deliver(conn, config) -> dict[str, set[str]]:
    """Send every due row through the real folder transports; destination -> SOP classes."""
    dispatcher = Dispatcher(config)
    delivered: dict[str, set[str]] = {}
    for name in ("ohif", "archive"):
        dispatcher.senders[name].send_due(conn)
        files = config.destinations[name].path.rglob("*.dcm")
        delivered[name] = {str(dcmread(p, stop_before_pixels=True).SOPClassUID) for p in files}
    return delivered


def run_job(conn, config, job) -> None:
    result = PipelineRunner(config).run(work_item_for(conn, job, config))
    assert result.ok, result.error
    assert store_results(conn, job, result, config)


def test_a_chest_radiograph_reaches_ohif_as_captures_and_the_archive_as_a_seg(site, tmp_path):
    config, conn = site
    make_chest_xray(tmp_path / "cxr")
    datasets = [dcmread(p) for p in sorted((tmp_path / "cxr").glob("*.dcm"))]
    assert datasets[0].Modality == "DX"
    run_job(conn, config, claim(conn, config, datasets, ("ohif", "archive"), plugin="full"))
    delivered = deliver(conn, config)
    assert SegmentationStorage not in delivered["ohif"]
    assert SecondaryCaptureImageStorage in delivered["ohif"]
    assert len(delivered["ohif"]) == 3  # the SC, the Comprehensive SR, the Enhanced SR
    assert SegmentationStorage in delivered["archive"]
    assert SecondaryCaptureImageStorage not in delivered["archive"]


def test_a_ct_reaches_ohif_as_seg_and_reports(site, tmp_path):
    config, conn = site
    datasets = [dcmread(p) for p in write_synthetic_ct(tmp_path / "ct", slices=4, size=32)]
    run_job(conn, config, claim(conn, config, datasets, ("ohif", "archive"), plugin="full"))
    delivered = deliver(conn, config)
    assert SegmentationStorage in delivered["ohif"]
    assert SecondaryCaptureImageStorage not in delivered["ohif"]
    assert len(delivered["ohif"]) == 3  # the SEG, the Comprehensive SR, the Enhanced SR


def write_config(tmp_path: Path, destination: dict) -> Path:
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump({"destinations": {"viewer": destination}}))
    return path


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"viewer_profile": "osirix"},
            "viewer_profile 'osirix' is not known; use one of generic, ohif",
        ),
        ({"send_as": []}, "send_as is empty, so this destination would receive nothing"),
        ({"send_as": ["seg", "sr", "seg"]}, "send_as lists seg more than once"),
    ],
)
def test_node_yaml_refuses_a_destination_that_cannot_work(tmp_path, fields, message):
    path = write_config(tmp_path, folder(tmp_path, "out", **fields))
    with pytest.raises(ConfigError) as refused:
        load_node_config(path)
    assert "destinations.viewer.folder" in str(refused.value)
    assert message in str(refused.value)


def test_ainode_config_schema_describes_the_profile(capsys):
    assert main(["config", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    for kind in ("DicomDestination", "FolderDestination"):
        field = schema["$defs"][kind]["properties"]["viewer_profile"]
        assert field["default"] == "generic"
        assert "OHIF 3.13" in field["description"]
    assert schema["$defs"]["ViewerProfile"]["enum"] == [p.value for p in ViewerProfile]
