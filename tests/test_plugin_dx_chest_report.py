"""dx-chest-report: chained after dx-chest, its text states exactly dx-chest's findings."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from plugin_support import ratios
from pydicom import dcmread
from pydicom.sr.coding import Code

from models.api import (
    AlgorithmIdentification,
    Device,
    Finding,
    Findings,
    Measurement,
    PluginInput,
    QualitativeEvaluation,
    SourceFrame,
)
from models.devices import GpuSlots
from models.loading import load_plugin_input
from models.manifest import load_manifest
from models.phantoms.chest_xray import (
    ChestXrayAnatomy,
    Photometric,
    RadiographKind,
    make_chest_xray,
)
from models.plugins.dx_chest.train import HELD_OUT_SEED_START
from models.runners.python import instantiate
from models.runtime import PluginHost, catalog_of

PLUGINS = Path(__file__).resolve().parent.parent / "models" / "plugins"
TEST_SEED = HELD_OUT_SEED_START + 600_000
# chest radiograph findings dx-chest never produces: the draft must not mention them
NOT_PRODUCED = (
    "effusion",
    "pneumothorax",
    "nodule",
    "consolidation",
    "edema",
    "oedema",
    "fracture",
    "mass",
    "opacity",
    "atelectasis",
    "pneumonia",
    "normal",
)
CARDIOMEGALY = Code("287272002", "SCT", "Cardiomegaly")


@pytest.fixture(scope="module")
def host(tmp_path_factory) -> PluginHost:
    manifests = [load_manifest(PLUGINS / "dx_chest"), load_manifest(PLUGINS / "dx_chest_report")]
    slots = GpuSlots([], 1, tmp_path_factory.mktemp("slots"), check_cuda=False)
    return PluginHost(catalog_of(manifests), slots)


def run_chain(host: PluginHost, tmp_path: Path, ctr: float, seed: int):
    written = make_chest_xray(
        tmp_path,
        kind=RadiographKind.DX,
        photometric=Photometric.MONOCHROME1,
        anatomy=ChestXrayAnatomy(ctr=ctr, rows=448, columns=448, seed=seed),
    )
    result = host.run_chain("dx-chest-report", None, load_plugin_input([written.path]))
    assert list(result.findings) == ["dx-chest", "dx-chest-report"]
    return result.findings["dx-chest"], result.final


def mentioned_values(findings: Findings) -> list[str]:
    values = [m for f in findings.findings for m in f.measurements]
    values += list(findings.study_measurements)
    return [f"{m.value:g}" if abs(m.value) < 10 else f"{m.value:.1f}" for m in values]


def assert_states_exactly(prior: Findings, text: str) -> None:
    lowered = text.lower()
    for word in NOT_PRODUCED:
        assert not re.search(rf"\b{word}\b", lowered), f"report mentions {word!r}: {text}"
    for value in mentioned_values(prior):
        assert value in text, f"measurement {value} missing from: {text}"
    for evaluation in prior.study_evaluations:
        assert f"{evaluation.concept.meaning}: {evaluation.value.meaning.lower()}" in text


def test_positive_phantom_reports_cardiomegaly_with_its_ratio(host, tmp_path) -> None:
    prior, final = run_chain(host, tmp_path, ctr=0.6, seed=TEST_SEED)
    report = final.report
    assert report is not None
    # carried forward, so the one job yields SEG and SR as well as the text
    assert [s.key for s in final.segments] == [s.key for s in prior.segments]
    assert final.study_measurements == prior.study_measurements
    assert final.algorithm.name == "dx-chest-report"
    (ratio,) = ratios(prior)
    (verdict,) = prior.study_evaluations
    assert verdict.value.meaning == "Present"
    assert report.impression.startswith("Cardiomegaly (cardiothoracic ratio")
    assert f"{ratio.value:g}" in report.impression
    assert "No cardiomegaly" not in report.findings + report.impression
    assert_states_exactly(prior, report.findings)


def test_negative_phantom_reports_no_cardiomegaly(host, tmp_path) -> None:
    prior, final = run_chain(host, tmp_path, ctr=0.41, seed=TEST_SEED + 1)
    report = final.report
    assert report is not None
    (verdict,) = prior.study_evaluations
    assert verdict.value.meaning == "Absent"
    assert report.impression.startswith("No cardiomegaly (cardiothoracic ratio")
    assert "Cardiomegaly: present" not in report.findings
    assert_states_exactly(prior, report.findings)


def _input(prior: dict[str, Findings]) -> PluginInput:
    return PluginInput(
        study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.4",
        modality="DX",
        pixels=np.zeros((1, 8, 8), np.float32),
        sources=(SourceFrame("1.2.840.10008.5.1.4.1.1.1.1", "1.2.3.4.5"),),
        pixel_spacing=(0.2, 0.2),
        prior=prior,
    )


@pytest.fixture(scope="module")
def reporter():
    plugin = instantiate(load_manifest(PLUGINS / "dx_chest_report"))
    plugin.load(Device())
    return plugin


def test_indeterminate_heart_says_it_was_not_assessed(reporter) -> None:
    prior = Findings(
        algorithm=AlgorithmIdentification("dx-chest", "1.0.0"),
        study_evaluations=(
            QualitativeEvaluation(CARDIOMEGALY, Code("82334004", "SCT", "Indeterminate")),
        ),
    )
    report = reporter.run(_input({"dx-chest": prior})).report
    assert report.impression.startswith("Heart size not assessed")
    assert "No cardiomegaly" not in report.impression
    assert "cardiothoracic ratio 0" not in report.findings + report.impression


def test_whatever_dx_chest_produced_is_stated_and_nothing_more(reporter) -> None:
    """A finding this version of dx-chest never makes still appears, because it was produced;
    and a run with no findings at all says so rather than inventing a normal report."""
    effusion = Code("60046008", "SCT", "Pleural effusion")
    prior = Findings(
        algorithm=AlgorithmIdentification("dx-chest", "9.9.9"),
        findings=(
            Finding(
                tracking_id="heart",
                finding_type=Code("80891009", "SCT", "Heart"),
                measurements=(
                    Measurement(
                        Code("103355008", "SCT", "Width"), 151.5, Code("mm", "UCUM", "millimeter")
                    ),
                ),
            ),
        ),
        study_evaluations=(
            QualitativeEvaluation(effusion, Code("52101004", "SCT", "Present"), 0.8),
        ),
    )
    report = reporter.run(_input({"dx-chest": prior})).report
    assert "Heart: width 151.5 mm." in report.findings
    assert "Pleural effusion: present (confidence 0.80)." in report.findings
    assert "Pleural effusion: present" in report.impression
    assert "ardiomegaly" not in report.findings + report.impression

    empty = Findings(algorithm=AlgorithmIdentification("dx-chest", "9.9.9"))
    report = reporter.run(_input({"dx-chest": empty})).report
    assert "No finding was produced" in report.impression
    assert "ardiomegaly" not in report.findings + report.impression


def test_missing_prior_findings_is_an_error_that_names_the_fix(reporter) -> None:
    with pytest.raises(ValueError, match=r"needs dx-chest's findings"):
        reporter.run(_input({}))


def test_manifest_must_declare_the_dependency(tmp_path) -> None:
    source = (PLUGINS / "dx_chest_report" / "plugin.yaml").read_text()
    (tmp_path / "plugin.yaml").write_text(source.replace("needs: [dx-chest]", "needs: []"))
    (tmp_path / "plugin.py").write_text((PLUGINS / "dx_chest_report" / "plugin.py").read_text())
    with pytest.raises(Exception, match="needs"):
        instantiate(load_manifest(tmp_path))


def _text_values(item) -> list[str]:
    values = [str(item.TextValue)] if "TextValue" in item else []
    for child in item.get("ContentSequence", []):
        values += _text_values(child)
    return values


@pytest.mark.dicom3tools
def test_the_chain_job_yields_valid_seg_sr_and_text_sr(host, tmp_path, validate_dicom) -> None:
    from node.outputs import OutputContext, build_outputs

    written = make_chest_xray(
        tmp_path / "source",
        kind=RadiographKind.CR,
        photometric=Photometric.MONOCHROME2,
        anatomy=ChestXrayAnatomy(ctr=0.56, rows=384, columns=352, seed=TEST_SEED + 2),
    )
    series = load_plugin_input([written.path])
    final = host.run("dx-chest-report", None, series)
    context = OutputContext(
        job_id="test-dx-chest-report",
        plugin_name="dx-chest-report",
        plugin_version="1.0.0",
    )
    results = build_outputs(final, series, context)
    assert sorted(r.kind.value for r in results) == ["seg", "sr", "text_sr"]
    text_sr = next(r.dataset for r in results if r.kind.value == "text_sr")
    assert final.report.impression.splitlines()[0] in "\n".join(_text_values(text_sr))
    out = tmp_path / "out"
    out.mkdir()
    for result in results:
        result.write(out)
    outcome = validate_dicom(out, sources=(written.path,))
    assert outcome.returncode == 0, outcome.stdout + outcome.stderr


# --- pixel spacing: the text says what lengths rest on, and prints none without spacing ------

MILLIMETRES = re.compile(r"\d\s*mm\b")


def _sr_units(final: Findings, series: PluginInput) -> list[str]:
    """Units of every numeric content item of the TID 1500 SR built from ``final``."""
    from node.outputs import OutputContext, build_outputs

    context = OutputContext(
        job_id="test-spacing", plugin_name="dx-chest-report", plugin_version="1"
    )
    (sr,) = [r.dataset for r in build_outputs(final, series, context) if r.kind.value == "sr"]

    def walk(items) -> list[str]:
        units = []
        for item in items:
            for value in item.get("MeasuredValueSequence", []):
                units.append(str(value.MeasurementUnitsCodeSequence[0].CodeValue))
            units += walk(item.get("ContentSequence", []))
        return units

    return walk(sr.ContentSequence)


@pytest.mark.corpus
@pytest.mark.parametrize("name", ["RG1_J2KI.dcm", "gdcm-CR-MONO1-10-chest.dcm"])
def test_corpus_radiograph_without_spacing_reports_ratio_and_no_millimetre(
    host, corpus, name
) -> None:
    """The NEMA CR (PixelSpacing 0\\0) and the Fuji CR (no spacing) were reported as
    "Heart: width 671.0 mm" and "227.0 mm … Cardiomegaly" at an assumed 1 mm per pixel."""
    series = load_plugin_input([corpus / "xr-chest" / name])
    result = host.run_chain("dx-chest-report", None, series)
    prior, final = result.findings["dx-chest"], result.final
    text = final.report.findings + "\n" + final.report.impression
    assert "Lengths not reported: the image has no calibrated pixel spacing" in text
    assert not MILLIMETRES.search(text), text
    (ratio,) = ratios(prior)
    assert f"cardiothoracic ratio {ratio.value:g}" in final.report.impression
    (heart,) = [line for line in final.report.findings.splitlines() if line.startswith("Heart:")]
    assert "width not reported" in heart and "diameter not reported" in heart
    assert "mm" not in _sr_units(final, series) and "{ratio}" in _sr_units(final, series)


def test_report_names_the_magnification_its_lengths_were_corrected_by(host, tmp_path) -> None:
    written = make_chest_xray(
        tmp_path,
        kind=RadiographKind.DX,
        anatomy=ChestXrayAnatomy(ctr=0.5, rows=384, columns=384, seed=TEST_SEED + 3),
    )
    ds = dcmread(written.path)
    del ds.PixelSpacing
    ds.save_as(written.path)
    final = host.run("dx-chest-report", None, load_plugin_input([written.path]))
    assert "Lengths from ImagerPixelSpacing" in final.report.findings
    assert "corrected by magnification 1.091 (EstimatedRadiographicMagnificationFactor)" in (
        final.report.findings
    )


def test_an_out_of_range_length_gives_no_number_and_no_verdict(reporter) -> None:
    width = Code("103355008", "SCT", "Width")
    prior = Findings(
        algorithm=AlgorithmIdentification("dx-chest", "1.0.0"),
        findings=(
            Finding(
                tracking_id="heart",
                finding_type=Code("80891009", "SCT", "Heart"),
                evaluations=(
                    QualitativeEvaluation(width, Code("114009", "DCM", "Value out of range")),
                ),
            ),
        ),
        study_evaluations=(
            QualitativeEvaluation(CARDIOMEGALY, Code("82334004", "SCT", "Indeterminate")),
        ),
    )
    report = reporter.run(_input({"dx-chest": prior})).report
    assert "Heart: width not assessed (outside the range an adult chest can have)." in (
        report.findings
    )
    assert report.impression.startswith("Heart size not assessed: a measured width is outside")
    assert not MILLIMETRES.search(report.findings + report.impression)
