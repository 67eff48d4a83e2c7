"""mr-vessel-wall against the neck MR phantom's analytic truth (acceptance: wall thickness and
areas within 10%), a clear "no finding" on a real brain MR, the committed TorchScript file
reproduced by its export script, and the findings through the output builders and validator."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from plugin_support import assert_outputs_validate, phantom_fixtures, phantom_order
from pydicom.sr.codedict import codes
from scipy import ndimage

from models.api import Findings
from models.devices import GpuSlots
from models.loading import load_plugin_input
from models.manifest import load_manifest
from models.manifest_checks import Severity, check_manifest
from models.phantoms.neck_mr import CarotidSide, NeckMRSpec, write_neck_mr
from models.runtime import PluginHost, catalog_of

PLUGIN_DIR = Path(__file__).resolve().parent.parent / "models" / "plugins" / "mr_vessel_wall"

plugin, written, series, findings = phantom_fixtures(
    "mr_vessel_wall", lambda folder: write_neck_mr(folder, NeckMRSpec.small(seed=2))
)


def measured(findings: Findings, tracking_id: str, meaning: str) -> float:
    (finding,) = [f for f in findings.findings if f.tracking_id == tracking_id]
    (value,) = [m.value for m in finding.measurements if m.concept.meaning == meaning]
    return value


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_manifest_checks_clean_including_the_model_checksum() -> None:
    problems = check_manifest(load_manifest(PLUGIN_DIR))
    assert [p for p in problems if p.severity is Severity.ERROR] == []


@pytest.mark.parametrize("side", list(CarotidSide))
def test_areas_and_thickness_within_10_percent(findings, written, side) -> None:
    phantom, _ = written
    truth = phantom.side_truth(side)
    name = f"{side.capitalize()} carotid"
    lumen = np.mean([t.lumen_area_mm2 for t in truth])
    wall = np.mean([t.wall_area_mm2 for t in truth])
    thickness = max(t.max_wall_thickness_mm for t in truth)
    index = sum(t.wall_area_mm2 for t in truth) / sum(
        t.wall_area_mm2 + t.lumen_area_mm2 for t in truth
    )
    assert measured(findings, f"{name} lumen", "Vessel lumen cross-sectional area") == (
        pytest.approx(lumen, rel=0.10)
    )
    assert measured(findings, f"{name} wall", "Area") == pytest.approx(wall, rel=0.10)
    assert measured(findings, f"{name} wall", "Wall Thickness") == pytest.approx(
        thickness, rel=0.10
    )
    assert measured(findings, f"{name} wall", "Normalized wall index") == pytest.approx(
        index, rel=0.10
    )
    length = measured(findings, f"{name} wall", "Length of vessel segment (observable entity)")
    assert length == pytest.approx(phantom.spec.shape[0] * phantom.spec.slice_spacing_mm)


def test_masks_overlap_the_drawn_lumen_and_wall(findings, written, series) -> None:
    phantom, paths = written
    order = phantom_order(series, paths)
    for side in CarotidSide:
        assert dice(findings.segment(f"{side}-lumen").mask, phantom.lumen[side][order]) >= 0.9
        assert dice(findings.segment(f"{side}-wall").mask, phantom.wall[side][order]) >= 0.85


def test_thickest_wall_and_lumen_are_drawn_on_the_key_slice(findings, series) -> None:
    """Each carotid's maximum wall thickness is a line across its wall, as long as the value
    within a pixel and a half, and its lumen is outlined on the same slice."""
    pixel_mm = series.pixel_spacing[0]
    walls = [f for f in findings.findings if f.tracking_id.endswith("wall")]
    assert len(walls) == 2
    for wall in walls:
        lumen = next(
            f for f in findings.findings if f.tracking_id == wall.tracking_id[:-4] + "lumen"
        )
        (thickness,) = [m for m in wall.measurements if m.graphic is not None]
        line = thickness.graphic
        assert thickness.concept == codes.DCM.WallThickness
        (start, end) = np.asarray(line.points)
        length_mm = float(np.linalg.norm(end - start)) * pixel_mm
        assert abs(length_mm - thickness.value) <= 1.5 * pixel_mm
        wall_mask = findings.segment(wall.segment_key).mask[line.frame]
        lumen_mask = findings.segment(lumen.segment_key).mask[line.frame]
        unit = (end - start) / np.linalg.norm(end - start)
        # the line ends on the wall's outer edge and starts on the lumen's edge
        assert wall_mask[tuple(np.round(end - 0.25 * unit).astype(int))]
        assert lumen_mask[tuple(np.round(start - 0.25 * unit).astype(int))]
        (area,) = lumen.measurements
        assert area.graphic.frame == line.frame
        inside = np.round(np.asarray(area.graphic.points)).astype(int)
        near = ndimage.binary_dilation(lumen_mask, iterations=2)
        assert near[inside[:, 0], inside[:, 1]].all()


def test_plaque_reported_where_the_wall_is_thick(findings, written) -> None:
    phantom, _ = written
    for side in CarotidSide:
        (wall,) = [
            f for f in findings.findings if f.tracking_id == f"{side.capitalize()} carotid wall"
        ]
        (plaque,) = wall.evaluations
        thick = max(t.max_wall_thickness_mm for t in phantom.side_truth(side)) >= 1.5
        assert plaque.value == (codes.SCT.Present if thick else codes.SCT.Absent)
    assert findings.report is not None and "slices 1–" in findings.report.findings


def test_a_neck_without_plaque_reports_none(tmp_path, plugin) -> None:
    spec = NeckMRSpec.small(seed=4)
    healthy = replace(spec.right, plaque_max_offset_mm=0.0)
    spec = replace(spec, right=healthy, left=replace(spec.left, plaque_max_offset_mm=0.0))
    _, paths = write_neck_mr(tmp_path, spec)
    result = plugin.run(load_plugin_input(paths))
    plaques = [e.value for f in result.findings for e in f.evaluations]
    assert plaques == [codes.SCT.Absent, codes.SCT.Absent]
    assert "No carotid wall thickening" in result.report.impression


def test_a_non_mr_series_is_refused(plugin, series) -> None:
    with pytest.raises(ValueError, match="MR"):
        plugin.run(replace(series, modality="CT"))


@pytest.mark.corpus
def test_brain_mr_gives_a_clear_no_finding(corpus, tmp_path) -> None:
    """Through the PluginHost, as a job runs it: accepted, run, and a plain "no carotid"."""
    files = sorted(p for p in (corpus / "mr-brain-ge-epi-150").iterdir() if p.is_file())
    host = PluginHost(catalog_of([load_manifest(PLUGIN_DIR)]), GpuSlots([], 1, tmp_path))
    try:
        result = host.run("mr-vessel-wall", None, load_plugin_input(files))
    finally:
        host.close()
    assert result.segments == () and result.findings == ()
    (presence,) = result.study_evaluations
    assert presence.concept == codes.SCT.CarotidArtery
    assert presence.value == codes.SCT.Absent
    assert "No carotid" in result.report.impression


@pytest.mark.dicom3tools
def test_findings_become_valid_seg_and_sr(
    tmp_path, plugin, written, series, findings, validate_dicom
) -> None:
    assert_outputs_validate(
        plugin, findings, series, tmp_path, validate_dicom, sources=(written[1][0].parent,)
    )


def _archive_contents(path: Path) -> dict[str, bytes]:
    """The archive's members without the per-save serialization id and the debug tables
    (which record the source file's path), keyed by name below the archive folder."""
    with zipfile.ZipFile(path) as archive:
        return {
            name.split("/", 1)[1]: archive.read(name)
            for name in archive.namelist()
            if not name.endswith(("serialization_id", ".debug_pkl"))
        }


@pytest.mark.slow
def test_export_reproduces_the_committed_model(tmp_path, written, series) -> None:
    """Re-run export.py and compare the scripted graph, constants and outputs."""
    subprocess.run(
        [sys.executable, str(PLUGIN_DIR / "export.py"), "--out", str(tmp_path)], check=True
    )
    committed = PLUGIN_DIR / "vessel_wall.pt"
    fresh = tmp_path / "vessel_wall.pt"
    assert _archive_contents(fresh) == _archive_contents(committed)
    patches = torch.tensor(series.pixels[:, 60:124, 60:124].copy())
    centres = torch.full((patches.shape[0], 2), 32.0)
    pixel = torch.tensor(series.pixel_spacing[0])
    for a, b in zip(
        torch.jit.load(str(committed))(patches, centres, pixel),
        torch.jit.load(str(fresh))(patches, centres, pixel),
        strict=True,
    ):
        assert torch.equal(a, b)
