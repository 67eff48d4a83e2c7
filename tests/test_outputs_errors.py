"""How output building fails: findings or sources the builders cannot write raise the one
``OutputBuildError`` family (the job fails at once with the reason); a builder's bug raises
what it raises, so the job shows a crash with its traceback instead of "cannot build"."""

from __future__ import annotations

import copy
import dataclasses

import highdicom as hd
import pytest
from outputs_support import context, full_findings
from pydicom.sr.codedict import codes

from models.api import Finding, GraphicKind, ImageGraphic, Measurement
from node.outputs import OutputBuildError, SegmentationGeometryError, build_outputs
from node.outputs.errors import refused_by_highdicom
from node.outputs.sr_graphics import GraphicPlacementError
from node.outputs.text_sr import build_text_report
from node.shared_types import OutputKind

PRIVATE_CLASS = "1.3.46.670589.5.0.1"  # a vendor's private image storage class


def test_every_refusal_is_an_output_build_error() -> None:
    assert issubclass(SegmentationGeometryError, OutputBuildError)
    assert issubclass(GraphicPlacementError, OutputBuildError)


def test_a_line_off_the_series_is_refused_as_such(ct_input) -> None:
    off = ImageGraphic(len(ct_input.sources) + 3, GraphicKind.LINE, ((1, 1), (1, 6)))
    finding = Finding(
        "Nodule 1",
        codes.SCT.Nodule,
        measurements=(Measurement(codes.SCT.Diameter, 2.5, codes.UCUM.Millimeter, off),),
    )
    findings = dataclasses.replace(full_findings(ct_input), findings=(finding,))
    with pytest.raises(OutputBuildError, match="Nodule 1"):
        build_outputs(findings, ct_input, context(outputs=(OutputKind.SR,)))


def test_a_report_without_source_headers_or_text_is_refused(ct_input) -> None:
    findings = full_findings(ct_input, report=False)
    with pytest.raises(OutputBuildError, match=r"needs Findings\.report"):
        build_text_report(findings, ct_input, context())
    headless = dataclasses.replace(ct_input, headers=(), files=())
    with pytest.raises(OutputBuildError, match="needs the source headers"):
        build_outputs(full_findings(ct_input), headless, context(outputs=(OutputKind.SR,)))


@pytest.mark.parametrize("kind", [OutputKind.SEG, OutputKind.SR, OutputKind.TEXT_SR])
def test_a_source_of_a_private_sop_class_is_refused_not_crashed(ct_input, kind) -> None:
    """highdicom raises KeyError deep inside for such a source; the builders say it first."""
    headers = []
    for header in ct_input.headers:
        header = copy.deepcopy(header)
        header.SOPClassUID = PRIVATE_CLASS
        headers.append(header)
    sources = tuple(dataclasses.replace(s, sop_class_uid=PRIVATE_CLASS) for s in ct_input.sources)
    private = dataclasses.replace(ct_input, headers=tuple(headers), sources=sources)
    with pytest.raises(OutputBuildError, match=f"SOP Class {PRIVATE_CLASS} is not a standard"):
        build_outputs(full_findings(private), private, context(outputs=(kind,)))


def test_highdicom_refusing_content_is_typed_and_names_the_output() -> None:
    refused = pytest.raises(OutputBuildError, match=r"the test report \(ValueError: .*1-based")
    with refused as caught, refused_by_highdicom("the test report"):
        hd.sr.SourceImageForMeasurementGroup(
            referenced_sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            referenced_sop_instance_uid="1.2.3.4",
            referenced_frame_numbers=[0],
        )
    assert isinstance(caught.value.__cause__, ValueError)


@pytest.mark.parametrize("bug", [TypeError, AttributeError, KeyError])
def test_a_programming_error_inside_a_builder_is_not_disguised(bug) -> None:
    with pytest.raises(bug), refused_by_highdicom("the test report"):
        raise bug("a bug of ours")
