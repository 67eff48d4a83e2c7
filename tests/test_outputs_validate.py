"""Every output kind passes ../shared/tools/validate-dicom (dciodvfy, dsrdump, highdicom round
trip, dcentvfy) with the sources given as -s: acceptance 1 of the outputs issue.

Sources: synthetic CT series (gantry-tilted, and one with missing Type 2 attributes and a
non-ASCII name without a character set), the corpus series the shipped routes select (chest
CT, chest radiographs) and, for geometry, the gantry-tilt CT and enhanced multi-frame MR/CT.
Several cases share one validator run (it checks each file on its own; dcentvfy keeps the
studies apart by UID), which keeps this file near half a minute."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from outputs_support import full_findings, write_synthetic_ct

from models.loading import load_plugin_input
from node.outputs import OutputContext, build_outputs
from node.shared_types import OutputKind

Validator = Callable[..., subprocess.CompletedProcess[str]]
WITHOUT_SC = (OutputKind.SEG, OutputKind.SR, OutputKind.TEXT_SR)


def build(files: list[Path], folder: Path, outputs: tuple[OutputKind, ...]) -> list[OutputKind]:
    """Build the outputs of full Findings over ``files`` into ``folder``; their kinds."""
    source = load_plugin_input(files)
    context = OutputContext(
        job_id=f"validate-{folder.name}",
        plugin_name="test-plugin",
        plugin_version="1.2.0",
        outputs=outputs,
    )
    folder.mkdir(parents=True, exist_ok=True)
    results = build_outputs(full_findings(source), source, context)
    for result in results:
        result.write(folder)
    return [result.kind for result in results]


def assert_valid(run: subprocess.CompletedProcess[str]) -> None:
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "-> PASS" in run.stdout


def series_of(folder: Path) -> list[list[Path]]:
    by_series: dict[str, list[Path]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        uid = pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID
        by_series.setdefault(uid, []).append(path)
    return sorted(by_series.values(), key=len)


@pytest.mark.dicom3tools
def test_synthetic_ct_outputs_validate(tmp_path: Path, validate_dicom: Validator):
    tilted = write_synthetic_ct(tmp_path / "tilt", slices=6, size=32, tilt=True)
    odd = write_synthetic_ct(
        tmp_path / "odd",
        slices=4,
        size=32,
        PatientBirthDate=None,
        PatientSex=None,
        AccessionNumber=None,
        StudyID=None,
        SpecificCharacterSet=None,
        PatientName="Åström^Zoë",
        PatientID="SYN0002",
    )
    for files, name in ((tilted, "tilt"), (odd, "odd")):
        assert set(build(files, tmp_path / "out" / name, tuple(OutputKind))) == set(OutputKind)
    # an SR without its SEG (a destination that takes only SRs) stands on its own
    assert build(tilted, tmp_path / "out" / "sr-only", (OutputKind.SR,)) == [OutputKind.SR]
    assert_valid(validate_dicom(tmp_path / "out", sources=(tmp_path / "tilt", tmp_path / "odd")))


@pytest.mark.dicom3tools
@pytest.mark.corpus
def test_ct_and_multiframe_corpus_outputs_validate(
    corpus: Path, tmp_path: Path, validate_dicom: Validator
):
    """Both LIDC chest-CT series (the chest-CT route selects them), the gantry-tilt head CT,
    an enhanced MR with per-frame geometry and the enhanced CT."""
    cases = [
        *series_of(corpus / "ct-chest-lidc"),
        sorted((corpus / "ct-head-ge-gantry-tilt").glob("*.dcm")),
    ]
    cases += [
        [corpus / "mr-enhanced-multiframe/siemens-xa10/6_1.dcm"],
        [corpus / "mr-enhanced-multiframe/misc/eCT_Supplemental.dcm"],
    ]
    sources: list[Path] = []
    for number, files in enumerate(cases):
        assert OutputKind.SEG in build(files, tmp_path / "out" / f"case{number}", WITHOUT_SC)
        sources += files
    assert_valid(validate_dicom(tmp_path / "out", sources=tuple(sources)))


@pytest.mark.dicom3tools
@pytest.mark.corpus
def test_chest_radiograph_outputs_validate(corpus: Path, tmp_path: Path, validate_dicom: Validator):
    names = [
        "gdcm-CR-MONO1-10-chest.dcm",  # CR, no character set, no pixel spacing
        "Monochrome1-Jpeg.dcm",  # CR, JPEG, ISO_IR 192, empty BodyPartExamined
        "RG1_J2KI.dcm",  # CR, JPEG 2000, PatientOrientation L\F
        # NIH CXR: Secondary Capture with Modality DX, invalid PatientAge "81"
        "1.3.6.1.4.1.11129.5.5.110503645592756492463169821050252582267888.dcm",
    ]
    sources = [corpus / "xr-chest" / name for name in names]
    for number, path in enumerate(sources):
        assert set(build([path], tmp_path / "out" / f"cxr{number}", tuple(OutputKind))) == set(
            OutputKind
        )
    assert_valid(validate_dicom(tmp_path / "out", sources=tuple(sources)))


@pytest.mark.dicom3tools
@pytest.mark.corpus
def test_outputs_of_a_source_dicom3tools_cannot_read_validate(
    corpus: Path, tmp_path: Path, validate_dicom: Validator
):
    """dx_image.dcm (a dog's thorax, empty Laterality) has pixel data of odd length, which
    dcentvfy refuses to read, so it cannot be a -s source; its outputs are checked alone."""
    build([corpus / "xr-chest" / "dx_image.dcm"], tmp_path / "out", tuple(OutputKind))
    assert_valid(validate_dicom(tmp_path / "out"))
