"""dx-chest on unseen phantoms (accuracy against drawn truth), on the real corpus radiographs,
and through the output builders and the validator."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from plugin_support import assert_outputs_validate, plugin_fixture, ratios

from models.api import Findings, PluginInput, SpacingSource
from models.loading import load_plugin_input
from models.manifest import load_manifest
from models.manifest_checks import Severity, check_manifest
from models.phantoms.chest_xray import (
    ChestXrayAnatomy,
    Photometric,
    RadiographKind,
    WrittenChestXray,
    make_chest_xray,
)
from models.plugins.dx_chest.train import HELD_OUT_SEED_END, HELD_OUT_SEED_START, TrainingConfig
from models.runners.python import instantiate
from models.spacing import spacing_of_dataset

PLUGIN_DIR = Path(__file__).resolve().parent.parent / "models" / "plugins" / "dx_chest"
# seeds far above train.py's held-out ones: never trained on, never used to pick the model
TEST_SEED = HELD_OUT_SEED_START + 500_000
ANATOMICAL = {"Present", "Absent", "Indeterminate"}


def dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    return float(2 * (predicted & truth).sum() / (predicted.sum() + truth.sum()))


plugin = plugin_fixture("dx_chest")


def evaluation(findings: Findings):
    (result,) = findings.study_evaluations
    assert result.concept.meaning == "Cardiomegaly"
    return result


def ctr_of(findings: Findings) -> float:
    (ratio,) = ratios(findings)
    assert ratio.unit.value == "{ratio}"
    return ratio.value


def test_manifest_checks_clean_and_the_model_is_small() -> None:
    manifest = load_manifest(PLUGIN_DIR)
    errors = [p for p in check_manifest(manifest) if p.severity is Severity.ERROR]
    assert errors == []
    assert manifest.model_path is not None
    assert manifest.model_path.stat().st_size < 2 * 1024 * 1024
    assert set(manifest.input.modalities) == {"CR", "DX"}


CASES = [
    (RadiographKind.DX, Photometric.MONOCHROME2, 0.42, 512, 512),
    (RadiographKind.DX, Photometric.MONOCHROME1, 0.58, 512, 512),
    (RadiographKind.CR, Photometric.MONOCHROME1, 0.45, 560, 480),
    (RadiographKind.CR, Photometric.MONOCHROME2, 0.61, 480, 560),
]


@pytest.mark.parametrize(("kind", "photometric", "ctr", "rows", "columns"), CASES)
def test_unseen_phantom_accuracy(tmp_path, plugin, kind, photometric, ctr, rows, columns) -> None:
    index = CASES.index((kind, photometric, ctr, rows, columns))
    written: WrittenChestXray = make_chest_xray(
        tmp_path,
        kind=kind,
        photometric=photometric,
        anatomy=ChestXrayAnatomy(ctr=ctr, rows=rows, columns=columns, seed=TEST_SEED + index),
    )
    series = load_plugin_input([written.path])
    findings = plugin.run(series)
    truth = written.truth

    lungs, heart = findings.segment("lungs").mask, findings.segment("heart").mask
    assert lungs.shape == heart.shape == (1, rows, columns)
    assert dice(lungs[0], truth.lungs) >= 0.90
    assert dice(heart[0], truth.heart) >= 0.90
    assert abs(ctr_of(findings) - truth.ctr) <= 0.03

    verdict = evaluation(findings)
    assert verdict.value.meaning == ("Present" if truth.cardiomegaly else "Absent")
    assert 0.5 < verdict.confidence <= 1.0
    heart_width = findings.findings[0].measurements[0]
    assert heart_width.unit.value == "mm"
    assert heart_width.value == pytest.approx(truth.heart_width_mm, rel=0.06)


def test_training_seeds_never_reach_the_test_phantoms() -> None:
    config = TrainingConfig()
    training = range(config.seed, config.seed + config.phantoms)
    for seed in (TEST_SEED, TEST_SEED + 11, HELD_OUT_SEED_START):
        assert seed not in training and HELD_OUT_SEED_START <= seed < HELD_OUT_SEED_END
    with pytest.raises(ValueError, match="overlap"):
        TrainingConfig(seed=HELD_OUT_SEED_START - 10)


def test_only_a_frontal_chest_layout_is_measured() -> None:
    from models.plugins.dx_chest.chest import ChestMasks

    def masks(heart_box: tuple[slice, slice]) -> ChestMasks:
        lungs = np.zeros((100, 100), bool)
        lungs[20:80, 10:40] = lungs[20:80, 60:90] = True
        heart = np.zeros_like(lungs)
        heart[heart_box] = True
        return ChestMasks(lungs=lungs & ~heart, heart=heart, lung_components=2)

    assert masks((slice(55, 85), slice(35, 70))).measurable  # low, between the lungs
    assert not masks((slice(5, 30), slice(35, 70))).measurable  # above the lungs
    assert not masks((slice(55, 85), slice(85, 99))).measurable  # beside them
    assert not masks((slice(55, 85), slice(45, 52))).measurable  # CTR 0.09: implausible


def test_confidence_falls_near_the_threshold(plugin) -> None:
    from models.plugins.dx_chest.chest import cardiomegaly_probability

    assert cardiomegaly_probability(0.62) > 0.999
    assert cardiomegaly_probability(0.38) < 0.001
    assert cardiomegaly_probability(0.5) == pytest.approx(0.5)
    assert 0.5 < cardiomegaly_probability(0.51) < cardiomegaly_probability(0.52) < 0.99


def test_lateral_views_are_not_measured(tmp_path, plugin) -> None:
    written = make_chest_xray(
        tmp_path, anatomy=ChestXrayAnatomy(ctr=0.55, rows=256, columns=256, seed=TEST_SEED + 9)
    )
    series = load_plugin_input([written.path])
    header = series.headers[0].copy()
    header.ViewPosition = "LL"
    findings = plugin.run(replace(series, headers=(header,)))
    assert findings.segments == ()
    assert ratios(findings) == []
    assert evaluation(findings).value.meaning == "Indeterminate"


def test_run_before_load_says_what_to_do() -> None:
    fresh = instantiate(load_manifest(PLUGIN_DIR))
    with pytest.raises(RuntimeError, match="load"):
        fresh.segment(np.zeros((64, 64), np.float32))


@pytest.mark.corpus
def test_real_chest_radiographs_give_findings_or_a_clear_no_finding(corpus, plugin) -> None:
    files = sorted((corpus / "xr-chest").glob("*.dcm"))
    assert len(files) >= 5
    measured = 0
    for path in files:
        series: PluginInput = load_plugin_input([path])
        findings = plugin.run(series)
        verdict = evaluation(findings)
        assert verdict.value.meaning in ANATOMICAL
        if verdict.value.meaning == "Indeterminate":
            assert findings.segments == () and ratios(findings) == []
            continue
        measured += 1
        assert 0.2 < ctr_of(findings) < 0.9, path.name
        for segment in findings.segments:
            assert segment.mask.shape == series.shape
            assert segment.mask.any()
    # a model that has only seen phantoms still measures most of the four human PA chests
    assert measured >= 3


@pytest.mark.dicom3tools
def test_findings_become_valid_seg_and_sr(tmp_path, plugin, validate_dicom) -> None:
    written = make_chest_xray(
        tmp_path / "source",
        kind=RadiographKind.CR,
        photometric=Photometric.MONOCHROME1,
        anatomy=ChestXrayAnatomy(ctr=0.57, rows=384, columns=384, seed=TEST_SEED + 11),
    )
    series = load_plugin_input([written.path])
    findings = plugin.run(series)
    assert_outputs_validate(
        plugin, findings, series, tmp_path, validate_dicom, sources=(written.path,)
    )


@pytest.mark.slow
def test_training_reproduces_the_committed_accuracy(tmp_path) -> None:
    """Re-run train.py from scratch and hold it to the acceptance bounds on unseen phantoms."""
    import json
    import subprocess
    import sys

    repo = PLUGIN_DIR.parent.parent.parent
    subprocess.run(
        [sys.executable, "-m", "models.plugins.dx_chest.train", "--output", str(tmp_path)],
        cwd=repo,
        check=True,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )
    fresh = json.loads((tmp_path / "metrics.json").read_text())
    committed = json.loads((PLUGIN_DIR / "metrics.json").read_text())
    assert fresh["lung_dice_min"] >= 0.90 and fresh["heart_dice_min"] >= 0.90
    assert fresh["ctr_error_max"] <= 0.03
    assert fresh["lung_dice_mean"] >= committed["lung_dice_mean"] - 0.01
    assert fresh["heart_dice_mean"] >= committed["heart_dice_mean"] - 0.01
    assert fresh["ctr_error_rms"] <= committed["ctr_error_rms"] + 0.005


# --- pixel spacing: lengths only where the image says its spacing ---------------------------


def _lengths(findings: Findings) -> list[float]:
    return [m.value for f in findings.findings for m in f.measurements if m.unit.value == "mm"]


def _no_number_reasons(findings: Findings) -> set[str]:
    return {e.value.meaning for f in findings.findings for e in f.evaluations}


def _rewritten(path: Path, **changes: object) -> Path:
    """The phantom with header elements replaced (None: removed)."""
    ds = pydicom.dcmread(path)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path)
    return path


def test_without_spacing_only_the_ratio_is_reported_and_why(tmp_path, plugin) -> None:
    written = make_chest_xray(
        tmp_path, anatomy=ChestXrayAnatomy(ctr=0.58, rows=384, columns=384, seed=TEST_SEED + 21)
    )
    path = _rewritten(written.path, PixelSpacing=None, ImagerPixelSpacing=None)
    series = load_plugin_input([path])
    assert series.spacing_source is SpacingSource.NONE
    findings = plugin.run(series)
    assert _lengths(findings) == []
    assert _no_number_reasons(findings) == {"Measurement not attempted"}
    assert abs(ctr_of(findings) - written.truth.ctr) <= 0.03  # the ratio needs no spacing
    assert evaluation(findings).value.meaning == "Present"


def test_imager_spacing_corrected_by_magnification_gives_true_lengths(tmp_path, plugin) -> None:
    """The DX phantom's ImagerPixelSpacing is at the detector (1.09× the patient); divided by
    its EstimatedRadiographicMagnificationFactor it measures the drawn heart."""
    written = make_chest_xray(
        tmp_path, anatomy=ChestXrayAnatomy(ctr=0.45, rows=384, columns=384, seed=TEST_SEED + 22)
    )
    series = load_plugin_input([_rewritten(written.path, PixelSpacing=None)])
    assert series.spacing_source is SpacingSource.IMAGER_PIXEL_SPACING
    assert series.magnification == pytest.approx(1800 / 1650, rel=1e-5)
    heart_width = plugin.run(series).findings[0].measurements[0]
    assert heart_width.value == pytest.approx(written.truth.heart_width_mm, rel=0.06)


def test_an_impossible_length_is_not_assessed_and_no_verdict_rests_on_it(tmp_path, plugin) -> None:
    """A spacing five times too coarse makes the heart wider than any chest: no length, no
    ratio and no cardiomegaly verdict, but 'Value out of range'."""
    written = make_chest_xray(
        tmp_path, anatomy=ChestXrayAnatomy(ctr=0.6, rows=384, columns=384, seed=TEST_SEED + 23)
    )
    coarse = [5 * v for v in written.phantom.anatomy.pixel_spacing]
    series = load_plugin_input([_rewritten(written.path, PixelSpacing=coarse)])
    findings = plugin.run(series)
    assert _lengths(findings) == []
    assert "Value out of range" in _no_number_reasons(findings)
    assert ratios(findings) == []
    assert evaluation(findings).value.meaning == "Indeterminate"


@pytest.mark.corpus
@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("RG1_J2KI.dcm", "PixelSpacing 0.000\\0.000 is not positive"),  # NEMA CR, PixelSpacing 0\0
        ("gdcm-CR-MONO1-10-chest.dcm", "no PixelSpacing; no ImagerPixelSpacing"),  # Fuji CR
    ],
)
def test_corpus_radiographs_without_spacing_report_no_length(corpus, plugin, name, reason) -> None:
    """Both were once measured at an assumed 1 mm per pixel (a 671 mm heart; 227 mm)."""
    series = load_plugin_input([corpus / "xr-chest" / name])
    assert series.spacing_source is SpacingSource.NONE and not series.has_spacing
    assert reason in spacing_of_dataset(series.headers[0]).detail
    findings = plugin.run(series)
    assert _lengths(findings) == []
    assert _no_number_reasons(findings) == {"Measurement not attempted"}
    assert 0.2 < ctr_of(findings) < 0.9


def test_widths_and_outlines_are_drawn_where_they_were_measured(tmp_path, plugin) -> None:
    """The two widths of the ratio are lines as long as their values, and the heart and each
    lung field are outlined along their masks (the image's left is the patient's right)."""
    from skimage.draw import polygon

    written = make_chest_xray(
        tmp_path, anatomy=ChestXrayAnatomy(ctr=0.55, rows=384, columns=384, seed=TEST_SEED + 31)
    )
    series = load_plugin_input([written.path])
    findings = plugin.run(series)
    by_id = {f.tracking_id: f for f in findings.findings}
    assert set(by_id) == {"Cardiothoracic ratio", "Heart", "Right lung", "Left lung"}
    column_mm = series.pixel_spacing[1]
    widths = [m for m in by_id["Cardiothoracic ratio"].measurements if m.unit.value == "mm"]
    assert len(widths) == 2
    for width in widths:
        (r0, c0), (r1, c1) = width.graphic.points
        assert r0 == r1 and width.graphic.frame == 0
        assert (c1 - c0) * column_mm == pytest.approx(width.value, abs=0.051)
    masks = {"Heart": findings.segment("heart").mask[0], "Lungs": findings.segment("lungs").mask[0]}
    for name in ("Heart", "Right lung", "Left lung"):
        points = np.asarray(by_id[name].region.points)
        drawn = np.zeros(masks["Heart"].shape, bool)
        drawn[polygon(points[:, 0], points[:, 1], drawn.shape)] = True
        mask = masks["Heart" if name == "Heart" else "Lungs"]
        assert (drawn & mask).sum() / drawn.sum() >= 0.95, name
    right, left = (
        np.asarray(by_id[n].region.points)[:, 1].mean() for n in ("Right lung", "Left lung")
    )
    assert right < left
