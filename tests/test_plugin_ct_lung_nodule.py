"""ct-lung-nodule against the chest CT phantom's ground truth (acceptance: every nodule of
5 mm or more found, none on vessels or airways, diameter within 1 mm, volume within 15%),
on the real LIDC slices of the corpus, and through the output builders and the validator."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from plugin_support import assert_outputs_validate, phantom_fixtures, phantom_order
from pydicom.sr.codedict import codes

from models.api import Findings, MaskBox
from models.loading import load_plugin_input
from models.manifest import load_manifest
from models.manifest_checks import Severity, check_manifest
from models.phantoms.chest_ct import ChestCT, ChestCTSpec, NoduleKind, write_chest_ct

PLUGIN_DIR = Path(__file__).resolve().parent.parent / "models" / "plugins" / "ct_lung_nodule"
MATCH_DISTANCE_MM = 3.0

plugin, written, series, findings = phantom_fixtures(
    "ct_lung_nodule", lambda folder: write_chest_ct(folder, ChestCTSpec.small(seed=3))
)


def measurement(finding, meaning: str) -> float:
    (value,) = [m.value for m in finding.measurements if m.concept.meaning == meaning]
    return value


def centre_mm(mask: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    return np.argwhere(mask).mean(axis=0) * np.asarray(spacing)


def match(findings: Findings, phantom: ChestCT, order: list[int]) -> dict[int, object]:
    """Truth nodule index → the reported finding whose segment centre lies within 3 mm."""
    spacing = (phantom.geometry.slice_spacing, *phantom.geometry.pixel_spacing)
    matched = {}
    for finding in findings.findings:
        mask = findings.segment(finding.segment_key).binary
        in_phantom_order = np.empty_like(mask)
        in_phantom_order[order] = mask
        centre = centre_mm(in_phantom_order, spacing)
        for index, truth in enumerate(phantom.nodules):
            distance = np.linalg.norm(centre - np.array(truth.centre_voxel) * spacing)
            if distance < MATCH_DISTANCE_MM:
                matched[index] = finding
    return matched


def test_manifest_checks_clean() -> None:
    problems = check_manifest(load_manifest(PLUGIN_DIR))
    assert [p for p in problems if p.severity is Severity.ERROR] == []


def assert_accurate(findings: Findings, phantom: ChestCT, order: list[int]) -> None:
    matched = match(findings, phantom, order)
    for index, truth in enumerate(phantom.nodules):
        if truth.long_axis_mm < 5:
            continue
        assert index in matched, f"missed the {truth.long_axis_mm:.0f} mm {truth.spec.kind} nodule"
        finding = matched[index]
        assert abs(measurement(finding, "Long axis") - truth.long_axis_mm) <= 1.0
        assert abs(measurement(finding, "Short axis") - truth.short_axis_mm) <= 1.0
        assert measurement(finding, "Volume") == pytest.approx(truth.volume_mm3, rel=0.15)
    assert len(matched) == len(findings.findings), "a finding matches no phantom nodule"


def test_every_nodule_from_5_mm_is_found_and_measured(findings, written, series) -> None:
    phantom, paths = written
    assert_accurate(findings, phantom, phantom_order(series, paths))


def test_no_finding_lies_on_a_vessel_or_an_airway(findings, written, series) -> None:
    phantom, paths = written
    order = phantom_order(series, paths)
    structures = (phantom.vessels | phantom.airways)[order]
    for finding in findings.findings:
        # a finding on a vessel lies almost wholly in it; a juxtavascular nodule's mask may
        # take in a sliver of the vessel it touches
        mask = findings.segment(finding.segment_key).binary
        assert (mask & structures).sum() <= 0.1 * mask.sum(), f"{finding.tracking_id} is a vessel"


def test_side_zone_and_composition_are_reported(findings, written, series) -> None:
    phantom, paths = written
    matched = match(findings, phantom, phantom_order(series, paths))
    side_codes = {"right": codes.SCT.Right, "left": codes.SCT.Left}
    zone_codes = {
        "upper": codes.SCT.UpperZoneOfLung,
        "middle": codes.SCT.MiddleZoneOfLung,
        "lower": codes.SCT.LowerZoneOfLung,
    }
    for index, finding in matched.items():
        truth = phantom.nodules[index].spec
        evaluations = {e.concept.meaning: e.value for e in finding.evaluations}
        assert evaluations["Laterality"] == side_codes[truth.side]
        assert finding.finding_site == zone_codes[truth.zone]
        ground_glass = evaluations["Ground glass opacity"] == codes.SCT.Present
        assert ground_glass == (truth.kind is NoduleKind.PART_SOLID)
        mean_hu = measurement(finding, "Mean Attenuation Coefficient")
        assert (mean_hu < -200) == (truth.kind is NoduleKind.PART_SOLID)


def test_lungs_are_segmented_and_counted(findings, written, series) -> None:
    phantom, paths = written
    order = phantom_order(series, paths)
    for side, truth in (("right", phantom.right_lung), ("left", phantom.left_lung)):
        mask = findings.segment(f"{side}-lung").binary
        dice = 2 * (mask & truth[order]).sum() / (mask.sum() + truth.sum())
        assert dice >= 0.95, f"{side} lung Dice {dice:.3f}"
    (count,) = findings.study_measurements
    assert count.concept == codes.SCT.NumberOfLesions
    assert count.value == len(findings.findings)
    for segment in findings.segments:
        assert segment.shape == series.shape and segment.box.array.dtype == np.bool_


def test_masks_are_boxed_around_their_voxels(findings, series) -> None:
    """Each mask is the box around its voxels (a nodule's, not the series'), and expands to
    the same voxels: what the SEG is built from."""
    for segment in findings.segments:
        box = segment.mask
        assert isinstance(box, MaskBox) and box.volume_shape == series.shape
        assert box.array.base is None, "a view would keep the full volume alive"
        for axis in ((1, 2), (0, 2), (0, 1)):
            on = box.array.any(axis=axis)
            assert on[0] and on[-1], f"{segment.key}: the box is not tight"
        assert int(np.count_nonzero(segment.binary)) == int(np.count_nonzero(box.array))
    nodules = [s for s in findings.segments if s.key.startswith("nodule-")]
    assert nodules and all(s.box.array.nbytes < series.pixels[0].size for s in nodules)


def test_a_chest_without_nodules_says_so(tmp_path, plugin) -> None:
    spec = replace(ChestCTSpec.small(seed=5), nodules=())
    _, paths = write_chest_ct(tmp_path, spec)
    result = plugin.run(load_plugin_input(paths))
    assert result.findings == ()
    assert result.study_evaluations[0].value == codes.SCT.Absent
    assert result.study_measurements[0].value == 0
    assert "No lung nodule" in result.report.impression


def test_each_axis_is_drawn_where_it_was_measured(findings, series) -> None:
    """The long and short axis lines lie on one slice the nodule covers, end on the nodule,
    cross at right angles, and are as long as the values the report gives."""
    row_mm, column_mm = series.pixel_spacing
    assert findings.findings
    for finding in findings.findings:
        mask = findings.segment(finding.segment_key).binary
        axes = {m.concept.meaning: m for m in finding.measurements if m.graphic is not None}
        assert set(axes) == {"Long axis", "Short axis"}
        long_line, short_line = axes["Long axis"].graphic, axes["Short axis"].graphic
        assert long_line.frame == short_line.frame and mask[long_line.frame].any()
        vectors = []
        for axis in axes.values():
            (r0, c0), (r1, c1) = axis.graphic.points
            vector = np.array([(r1 - r0) * row_mm, (c1 - c0) * column_mm])
            assert np.linalg.norm(vector) == pytest.approx(axis.value, abs=0.05)
            vectors.append(vector / np.linalg.norm(vector))
        assert abs(float(vectors[0] @ vectors[1])) < 1e-6
        on = np.argwhere(mask[long_line.frame])
        for point in long_line.points:
            assert np.min(np.linalg.norm(on - np.asarray(point), axis=1)) <= 1.5


def test_a_nodule_cut_by_the_end_of_the_scan_says_so(plugin, written) -> None:
    """A series that ends inside a nodule: the nodule is flagged, its volume a lower bound."""
    phantom, paths = written
    series = load_plugin_input(paths)
    order = phantom_order(series, paths)
    truth = max(phantom.nodules, key=lambda n: n.long_axis_mm)
    end = round(truth.centre_voxel[0]) + 2  # the series stops just past the nodule's centre
    cut = [paths[order[i]] for i in range(len(paths)) if order[i] <= end]
    result = plugin.run(load_plugin_input(cut))
    edge = [
        f
        for f in result.findings
        if any(e.concept.meaning.startswith("Extends to the edge") for e in f.evaluations)
    ]
    assert edge, result.report.findings
    assert "may extend beyond the scanned range" in result.report.findings
    assert "volume at least" in result.report.findings
    whole = plugin.run(series)
    assert not any(
        e.concept.meaning.startswith("Extends to the edge")
        for f in whole.findings
        for e in f.evaluations
    )


def test_a_non_ct_series_is_refused(plugin, series) -> None:
    with pytest.raises(ValueError, match="CT"):
        plugin.run(replace(series, modality="MR"))


@pytest.mark.corpus
def test_real_lidc_chest_ct_runs(corpus, plugin) -> None:
    folders = sorted(p for p in (corpus / "ct-chest-lidc").glob("*/*/*") if p.is_dir())
    assert len(folders) == 2
    for folder in folders:
        series = load_plugin_input(sorted(folder.glob("*.dcm")))
        result = plugin.run(series)
        keys = {s.key for s in result.segments}
        assert {"right-lung", "left-lung"} <= keys, f"lungs not found in {folder.name}"
        (presence,) = result.study_evaluations
        assert presence.value in (codes.SCT.Present, codes.SCT.Absent)
        assert result.report is not None and result.report.impression
        if "LIDC-IDRI-0001" in str(folder):
            # the large juxtapleural nodule of the left lower lobe visible in these slices
            sides = {
                e.value.meaning
                for f in result.findings
                if measurement(f, "Long axis") >= 15
                for e in f.evaluations
                if e.concept == codes.SCT.Laterality
            }
            assert "Left" in sides, result.report.findings


@pytest.mark.slow
def test_large_phantom_acceptance(tmp_path, plugin) -> None:
    phantom, paths = write_chest_ct(tmp_path, ChestCTSpec.large())
    series = load_plugin_input(paths)
    assert_accurate(plugin.run(series), phantom, phantom_order(series, paths))


@pytest.mark.dicom3tools
def test_findings_become_valid_seg_and_sr(
    tmp_path, plugin, written, series, findings, validate_dicom
) -> None:
    assert_outputs_validate(
        plugin, findings, series, tmp_path, validate_dicom, sources=(written[1][0].parent,)
    )
