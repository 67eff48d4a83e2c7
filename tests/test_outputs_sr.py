"""The TID 1500 SR built from Findings on a small synthetic CT: groups, measurements and
their image coordinates, references, study-level results and codes, read back with highdicom."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest
from outputs_support import context, key
from pydicom.sr.codedict import codes

from models.api import (
    AlgorithmIdentification,
    Code,
    Finding,
    Findings,
    GraphicKind,
    ImageGraphic,
    Measurement,
    QualitativeEvaluation,
)
from node.outputs import build_outputs
from node.outputs.procedure import CT_CHEST
from node.outputs.sr_graphics import GraphicPlacementError
from node.shared_types import OutputKind


def test_sr_round_trip_groups_measurements_and_references(built, ct_input, tmp_path):
    findings, by_kind = built
    seg_uid = by_kind[OutputKind.SEG][0].sop_instance_uid
    sr = hd.sr.srread(by_kind[OutputKind.SR][0].write(tmp_path))
    assert sr.SOPClassUID == pydicom.uid.ComprehensiveSRStorage
    assert key(sr.ConceptNameCodeSequence[0]) == ("126000", "DCM")
    procedure = [
        i for i in sr.ContentSequence if key(i.ConceptNameCodeSequence[0]) == ("121058", "DCM")
    ]
    assert key(procedure[0].ConceptCodeSequence[0]) == key(CT_CHEST)  # a chest CT's source
    report = hd.sr.MeasurementReport.from_sequence([sr])
    groups = {
        g.tracking_identifier: g
        for g in report.get_volumetric_roi_measurement_groups()
        + report.get_planar_roi_measurement_groups()
    }
    # measurements along a line: a TID 1501 group of the same finding (tracking UID)
    lines = {g.tracking_identifier: g for g in report.get_image_measurement_groups()}
    groups |= {name: group for name, group in lines.items() if name not in groups}
    assert set(groups) == {f.tracking_id for f in findings.findings}
    assert set(lines) == {"Nodule 1"}  # the only finding with a line and a segment
    assert lines["Nodule 1"].tracking_uid == groups["Nodule 1"].tracking_uid
    seg = pydicom.dcmread(by_kind[OutputKind.SEG][0].write(tmp_path))
    seg_tracking = {int(s.SegmentNumber): s.TrackingUID for s in seg.SegmentSequence}
    for finding in findings.findings:
        group = groups[finding.tracking_id]
        assert key(group.finding_type) == key(finding.finding_type)
        sites = [key(site.value) for site in group.finding_sites]
        assert sites == ([key(finding.finding_site)] if finding.finding_site else [])
        line_group = lines.get(finding.tracking_id)
        both = [group] if line_group in (None, group) else [group, line_group]
        measured = {
            (key(m.name), round(m.value, 6), key(m.unit))
            for g in both
            for m in g.get_measurements()
        }
        assert measured == {
            (key(m.concept), round(m.value, 6), key(m.unit)) for m in finding.measurements
        }
        evaluated = {(key(q.name), key(q.value)) for q in group.get_qualitative_evaluations()}
        expected = {(key(q.concept), key(q.value)) for q in finding.evaluations}
        if finding.segment_key is not None:  # highdicom lists the finding category here too
            category = findings.segment(finding.segment_key).category
            expected.add((("276214006", "SCT"), key(category)))
        assert evaluated == expected
        if finding.segment_key is not None:
            segment_number = [s.key for s in findings.segments].index(finding.segment_key) + 1
            reference = group.referenced_segment
            assert reference.referenced_sop_instance_uid == seg_uid
            assert list(reference.referenced_segment_numbers) == [segment_number]
            assert group.tracking_uid == seg_tracking[segment_number]  # SEG and SR agree
    # the nodule's group names exactly the slices the nodule lies on
    nodule = findings.segment("nodule-1").mask
    expected = {ct_input.sources[i].sop_instance_uid for i in np.flatnonzero(nodule.any((1, 2)))}
    cited = {
        item.referenced_sop_instance_uid
        for item in groups["Nodule 1"].referenced_segment.source_images_for_segmentation
    }
    assert cited == expected
    # the study-level results are the document's qualitative evaluations, not a group
    (evaluations,) = [
        i for i in sr.ContentSequence if key(i.ConceptNameCodeSequence[0]) == ("C0034375", "UMLS")
    ]
    study = {key(i.ConceptNameCodeSequence[0]): i for i in evaluations.ContentSequence}
    assert study[key(codes.SCT.NumberOfLesions)].TextValue == "1 lesions"
    assert key(study[key(codes.SCT.Nodule)].ConceptCodeSequence[0]) == key(codes.SCT.Present)
    # the diameter is drawn as a line on its slice, the emphysema as an outline
    (diameter,) = lines["Nodule 1"].get_measurements()
    assert diameter.name == codes.SCT.Diameter
    (line,) = diameter.referenced_coordinates
    centre = ct_input.sources[ct_input.shape[0] // 2]
    assert line.ValueType == "SCOORD" and line.GraphicType == "POLYLINE"
    assert line.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
        centre.sop_instance_uid
    )
    rows, columns = ct_input.shape[1:]
    assert line.value.tolist() == [
        [columns / 2 - 2.5, rows / 2 + 0.5],
        [columns / 2 + 3.5, rows / 2 + 0.5],
    ]
    region = groups["Emphysema"].roi
    assert region.GraphicType == "POLYLINE"
    assert region.value[0].tolist() == region.value[-1].tolist()  # an outline is closed
    evidence = {
        sop.ReferencedSOPInstanceUID
        for study_item in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study_item.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }
    assert evidence == {seg_uid} | {s.sop_instance_uid for s in ct_input.sources}


def test_confidence_is_a_probability_property_of_the_evaluation(built, tmp_path):
    findings, by_kind = built
    sr = pydicom.dcmread(by_kind[OutputKind.SR][0].write(tmp_path))

    def walk(items):
        for item in items:
            yield item
            yield from walk(item.get("ContentSequence", []))

    evaluations = [
        i
        for i in walk(sr.ContentSequence)
        if i.ValueType == "CODE"
        and key(i.ConceptNameCodeSequence[0]) == key(codes.DCM.LevelOfSignificance)
    ]
    assert len(evaluations) == 1
    probability = evaluations[0].ContentSequence[0]
    assert key(probability.ConceptNameCodeSequence[0]) == key(codes.DCM.Probability)
    expected = findings.findings[0].evaluations[0].confidence
    assert float(probability.MeasuredValueSequence[0].NumericValue) == pytest.approx(expected)


def test_local_coding_schemes_are_identified_in_the_report(ct_input, tmp_path):
    """A plugin's private code (no standard one exists for the cardiothoracic ratio) is named
    in the SR's Coding Scheme Identification Sequence; standard schemes are not listed."""
    ratio = Code("CTR", "99AINODE", "Cardiothoracic ratio")
    findings = Findings(
        algorithm=AlgorithmIdentification("test-plugin", "1.2.0"),
        study_measurements=(Measurement(ratio, 0.45, Code("{ratio}", "UCUM", "ratio")),),
    )
    (report,) = build_outputs(findings, ct_input, context(outputs=(OutputKind.SR,)))
    listed = pydicom.dcmread(report.write(tmp_path)).CodingSchemeIdentificationSequence
    assert [item.CodingSchemeDesignator for item in listed] == ["99AINODE"]


def test_a_report_of_study_level_results_only_validates(ct_input, tmp_path, validate_dicom):
    """No finding (e.g. no nodule): TID 1500 with its Qualitative Evaluations and no Imaging
    Measurements container (highdicom always writes one; the builder takes it out)."""
    findings = Findings(
        algorithm=AlgorithmIdentification("test-plugin", "1.2.0"),
        study_measurements=(
            Measurement(codes.SCT.NumberOfLesions, 0.0, Code("1", "UCUM", "no units")),
        ),
        study_evaluations=(QualitativeEvaluation(codes.SCT.Nodule, codes.SCT.Absent),),
    )
    (report,) = build_outputs(findings, ct_input, context(outputs=(OutputKind.SR,)))
    out = tmp_path / "out"
    out.mkdir()
    sr = pydicom.dcmread(report.write(out))
    names = [key(i.ConceptNameCodeSequence[0]) for i in sr.ContentSequence]
    assert ("126010", "DCM") not in names  # no (empty) Imaging Measurements
    (evaluations,) = [
        i for i in sr.ContentSequence if key(i.ConceptNameCodeSequence[0]) == ("C0034375", "UMLS")
    ]
    texts = {key(i.ConceptNameCodeSequence[0]): i for i in evaluations.ContentSequence}
    assert texts[key(codes.SCT.NumberOfLesions)].TextValue == "0"
    assert key(texts[key(codes.SCT.Nodule)].ConceptCodeSequence[0]) == key(codes.SCT.Absent)
    run = validate_dicom(out)
    assert run.returncode == 0, run.stdout[-4000:]


def test_a_graphic_off_the_source_fails_the_report_saying_where(ct_input):
    """A line on a frame the input does not have, or outside the frame, is the plugin's
    error: the report is refused with the finding and the frame named."""
    frames, rows = ct_input.shape[:2]
    for frame, point in ((frames, (1.0, 1.0)), (0, (rows + 5.0, 1.0))):
        line = ImageGraphic(frame, GraphicKind.LINE, ((0.0, 0.0), point))
        findings = Findings(
            algorithm=AlgorithmIdentification("test-plugin", "1.2.0"),
            findings=(
                Finding(
                    "Nodule 1",
                    codes.SCT.Nodule,
                    measurements=(
                        Measurement(codes.SCT.Diameter, 5.0, codes.UCUM.Millimeter, line),
                    ),
                ),
            ),
        )
        with pytest.raises(GraphicPlacementError, match=f"'Nodule 1'.* on frame {frame}"):
            build_outputs(findings, ct_input, context(outputs=(OutputKind.SR,)))
