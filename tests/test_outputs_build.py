"""Outputs: SEG, TID 1500 SR, text SR and burned-in SC built from Findings on a small
synthetic CT series, read back with highdicom (acceptance 2 and 4 of the outputs issue)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from outputs_support import (
    ALL_KINDS,
    EVERY_FRAME_NESTED,
    context,
    full_findings,
    key,
    sphere_mask,
    write_synthetic_ct,
)
from pydicom.sr.codedict import codes

from models.api import (
    AlgorithmIdentification,
    Findings,
    Segment,
    SourceFrame,
)
from models.loading import load_plugin_input
from node.output_settings import OutputsConfig
from node.outputs import (
    OutputBuildError,
    OutputContext,
    PredecessorDocument,
    ResultInstance,
    SegmentationGeometryError,
    build_outputs,
)
from node.shared_types import OutputKind


def written(result: ResultInstance, folder: Path) -> pydicom.Dataset:
    """Write to disk and read back, so the tests see what a PACS would receive."""
    return pydicom.dcmread(result.write(folder))


def test_every_kind_is_built_and_labelled(built, ct_input, tmp_path):
    _, by_kind = built
    assert set(by_kind) == set(ALL_KINDS)
    source = ct_input.headers[0]
    for kind, results in by_kind.items():
        for result in results:
            ds = written(result, tmp_path)
            assert ds.SOPInstanceUID == result.sop_instance_uid
            assert ds.StudyInstanceUID == source.StudyInstanceUID
            assert (
                ds.SeriesNumber
                == 7000 + {"seg": 0, "sr": 1, "text_sr": 2, "burned_in_sc": 3}[kind.value]
            )
            assert ds.SeriesDescription.startswith("AI test-plugin 1.2.0")
            assert "NOT FOR DIAGNOSTIC USE" in ds.SeriesDescription
            assert ds.Manufacturer == "ainode"
            assert list(ds.SoftwareVersions) == ["ainode 0.1.0", "test-plugin 1.2.0"]
            assert ds.PatientName == source.PatientName
            assert ds.PatientID == source.PatientID
            assert ds.AccessionNumber == source.AccessionNumber
    series = {r.series_instance_uid for results in by_kind.values() for r in results}
    assert len(series) == len(ALL_KINDS)  # one series per kind
    assert ct_input.series_instance_uid not in series


def test_seg_round_trip_segments_codes_and_pixels(built, ct_input, tmp_path):
    findings, by_kind = built
    path = by_kind[OutputKind.SEG][0].write(tmp_path)
    seg = hd.seg.segread(path)
    frames = ct_input.shape[0]
    assert seg.SegmentationType == "BINARY"
    # empty frames left out: one frame per segment and slice it has pixels on
    filled = [np.flatnonzero(segment.binary.any(axis=(1, 2))) for segment in findings.segments]
    assert int(seg.NumberOfFrames) == sum(map(len, filled)) < frames * len(filled)
    assert seg.ContentLabel == "AI_TEST_PLUGIN"
    tracking = {f.segment_key: f.tracking_id for f in findings.findings if f.segment_key}
    for number, segment in enumerate(findings.segments, 1):
        description = seg.get_segment_description(number)
        assert description.segment_label == segment.label
        assert key(description.segmented_property_category) == key(segment.category)
        assert key(description.segmented_property_type) == key(segment.type)
        assert description.tracking_id == tracking[segment.key]
        assert description.algorithm_type.value == "AUTOMATIC"
        assert description.algorithm_identification[0].AlgorithmName == "test-plugin"
        assert description.algorithm_identification[0].AlgorithmVersion == "1.2.0"
        regions = [key(c) for c in description.anatomic_regions]
        assert regions == ([key(segment.anatomic_site)] if segment.anatomic_site else [])
    uids = [s.sop_instance_uid for s in ct_input.sources]
    pixels = seg.get_pixels_by_source_instance(uids, combine_segments=False)
    for channel, segment in enumerate(findings.segments):
        np.testing.assert_array_equal(pixels[..., channel].astype(bool), segment.mask)
    # every frame names its source image and the segment it belongs to
    per_frame = seg.PerFrameFunctionalGroupsSequence
    cited = [
        fg.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        for fg in per_frame
    ]
    assert sorted(cited) == sorted(uids[index] for slices in filled for index in slices)
    color = seg.SegmentSequence[0].RecommendedDisplayCIELabValue
    assert hd.color.CIELabColor.from_dicom_value(color).to_rgb() == pytest.approx(
        (255, 0, 0), abs=2
    )


def test_text_sr_has_sections_and_key_image(built, ct_input, tmp_path):
    findings, by_kind = built
    sr = pydicom.dcmread(by_kind[OutputKind.TEXT_SR][0].write(tmp_path))
    assert sr.SOPClassUID == pydicom.uid.EnhancedSRStorage
    sections = {
        key(i.ConceptNameCodeSequence[0]): i
        for i in sr.ContentSequence
        if i.ValueType == "CONTAINER"
    }
    finding = sections[key(codes.DCM.Findings)].ContentSequence[0]
    impression = sections[key(codes.DCM.Impressions)].ContentSequence[0]
    assert finding.TextValue == findings.report.findings
    assert impression.TextValue == findings.report.impression
    largest = int(findings.segment("nodule-1").mask.sum(axis=(1, 2)).argmax())
    image = finding.ContentSequence[0]
    assert image.RelationshipType == "INFERRED FROM"
    assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
        ct_input.sources[largest].sop_instance_uid
    )


def test_burned_in_captures_show_the_segment_on_touched_frames(built, ct_input, tmp_path):
    findings, by_kind = built
    nodule = findings.segment("nodule-1").mask
    touched = np.flatnonzero(nodule.any(axis=(1, 2)))
    captures = by_kind[OutputKind.BURNED_IN_SC]
    assert len(captures) == len(touched)
    middle = written(captures[len(captures) // 2], tmp_path)
    frame_index = touched[len(captures) // 2]
    assert middle.SourceImageSequence[0].ReferencedSOPInstanceUID == (
        ct_input.sources[frame_index].sop_instance_uid
    )
    assert middle.BurnedInAnnotation == "YES"
    rgb = middle.pixel_array.astype(int)
    inside = nodule[frame_index]
    red_excess = rgb[..., 0] - rgb[..., 1]
    assert red_excess[inside].mean() > 50  # tinted red where the nodule is
    assert np.abs(red_excess[~inside]).max() == 0  # grey elsewhere


def test_same_job_same_uids_and_only_a_foreign_predecessor_is_cited(ct_input):
    findings = full_findings(ct_input)
    before = [str(header) for header in ct_input.headers]
    first = build_outputs(findings, ct_input, context())
    again = build_outputs(findings, ct_input, context())
    assert [str(header) for header in ct_input.headers] == before  # input left as it came
    assert [(r.kind, r.series_instance_uid, r.sop_instance_uid) for r in first] == [
        (r.kind, r.series_instance_uid, r.sop_instance_uid) for r in again
    ]
    seg_first = first[0].dataset.SegmentSequence[0].TrackingUID
    assert seg_first == again[0].dataset.SegmentSequence[0].TrackingUID
    old_sr = next(r for r in first if r.kind is OutputKind.SR)

    def cite(result) -> PredecessorDocument:
        return PredecessorDocument(
            study_instance_uid=ct_input.study_instance_uid,
            series_instance_uid=result.series_instance_uid,
            sop_instance_uid=result.sop_instance_uid,
            sop_class_uid=result.sop_class_uid,
        )

    # a newer version of the same job key replaces its report: no self-reference
    replacing = build_outputs(findings, ct_input, context(predecessor=cite(old_sr)))
    replacing_sr = next(r for r in replacing if r.kind is OutputKind.SR)
    assert replacing_sr.sop_instance_uid == old_sr.sop_instance_uid
    assert "PredecessorDocumentsSequence" not in replacing_sr.dataset
    # a report with other UIDs (another job key, an older ainode) is cited as superseded
    newer = build_outputs(findings, ct_input, context(job_id="job-43", predecessor=cite(old_sr)))
    old_uids = {r.sop_instance_uid for r in first} | {r.series_instance_uid for r in first}
    assert not old_uids & (
        {r.sop_instance_uid for r in newer} | {r.series_instance_uid for r in newer}
    )
    new_sr = next(r for r in newer if r.kind is OutputKind.SR).dataset
    cited = new_sr.PredecessorDocumentsSequence[0]
    assert cited.StudyInstanceUID == ct_input.study_instance_uid
    series = cited.ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == old_sr.series_instance_uid
    assert series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == old_sr.sop_instance_uid
    assert "PredecessorDocumentsSequence" not in old_sr.dataset


def test_context_from_config_and_kind_selection(ct_input, tmp_path):
    config = OutputsConfig(
        series_number_base=123, not_for_diagnostic_use=False, institution_name="General Hospital"
    )
    ctx = OutputContext.from_config(
        config,
        job_id="j",
        plugin_name="p",
        plugin_version="9",
        outputs=(OutputKind.SR,),
    )
    findings = full_findings(ct_input)
    results = build_outputs(findings, ct_input, ctx)
    assert [r.kind for r in results] == [OutputKind.SR]
    sr = results[0].dataset
    assert sr.SeriesNumber == 124
    assert sr.SeriesDescription == "AI p 9 measurements"
    assert sr.InstitutionName == "General Hospital"
    # without a SEG the nodule's group names the slices it lies on, and nothing else
    report = hd.sr.MeasurementReport.from_sequence([hd.sr.srread(results[0].write(tmp_path))])
    groups = {g.tracking_identifier: g for g in report.get_image_measurement_groups()}
    assert not report.get_volumetric_roi_measurement_groups()
    nodule = findings.segment("nodule-1").mask
    expected = {ct_input.sources[i].sop_instance_uid for i in np.flatnonzero(nodule.any((1, 2)))}
    cited = {
        item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for item in groups["Nodule 1"][0].ContentSequence
        if item.ValueType == "IMAGE"
    }
    assert cited == expected
    no_report = dataclasses.replace(findings, report=None, segments=(), findings=())
    kinds = [r.kind for r in build_outputs(no_report, ct_input, context())]
    assert kinds == [OutputKind.SR]  # nothing to segment, burn in or narrate


def test_fractional_and_thresholded_probability_masks(ct_input):
    rows = ct_input.shape[1]
    probability = np.zeros(ct_input.shape, np.float32)
    probability[3:6, 10:30, 10:30] = 0.3
    probability[4, 15:25, 15:25] = 0.9
    findings = Findings(
        algorithm=AlgorithmIdentification("p", "1"),
        segments=(
            Segment(
                "p",
                "Probability",
                codes.SCT.MorphologicallyAbnormalStructure,
                codes.SCT.Nodule,
                probability,
            ),
        ),
    )
    fractional = build_outputs(
        findings,
        ct_input,
        context(outputs=(OutputKind.SEG,), fractional_segmentation=True),
    )[0].dataset
    assert fractional.SegmentationType == "FRACTIONAL"
    seg = hd.seg.Segmentation.from_dataset(fractional)
    values = seg.get_pixels_by_source_instance([s.sop_instance_uid for s in ct_input.sources])
    np.testing.assert_allclose(values[..., 0], probability, atol=1 / 255)
    binary = build_outputs(findings, ct_input, context(outputs=(OutputKind.SEG,)))[0].dataset
    assert binary.SegmentationType == "BINARY"
    seg = hd.seg.Segmentation.from_dataset(binary)
    values = seg.get_pixels_by_source_instance([s.sop_instance_uid for s in ct_input.sources])
    np.testing.assert_array_equal(values[..., 0].astype(bool), probability >= 0.5)
    assert rows == values.shape[1]


def test_nested_segments_keep_their_overlap(ct_input):
    big = sphere_mask(ct_input.shape, (5, 24, 24), 8)
    small = sphere_mask(ct_input.shape, (5, 24, 24), 3)  # entirely inside big
    findings = Findings(
        algorithm=AlgorithmIdentification("p", "1"),
        segments=(
            Segment("organ", "Organ", codes.SCT.Organ, codes.SCT.Lung, big),
            Segment(
                "lesion",
                "Lesion",
                codes.SCT.MorphologicallyAbnormalStructure,
                codes.SCT.Nodule,
                small,
            ),
        ),
    )
    nested = context(outputs=(OutputKind.SEG,), seg=EVERY_FRAME_NESTED)
    dataset = build_outputs(findings, ct_input, nested)[0].dataset
    assert dataset.SegmentsOverlap == "YES"
    sources = [s.sop_instance_uid for s in ct_input.sources]
    # the built SEG builds highdicom's query tables on its first query, not before
    assert "_db_con" not in dataset.__dict__
    direct = dataset.get_pixels_by_source_instance(sources)
    assert "_db_con" in dataset.__dict__
    seg = hd.seg.Segmentation.from_dataset(dataset)
    values = seg.get_pixels_by_source_instance(sources)
    np.testing.assert_array_equal(values, direct)
    np.testing.assert_array_equal(values[..., 0].astype(bool), big)
    np.testing.assert_array_equal(values[..., 1].astype(bool), small)


def test_mask_shape_mismatch_and_mixed_sources_fail_clearly(ct_input):
    wrong = np.zeros((2, *ct_input.shape[1:]), bool)
    findings = Findings(
        algorithm=AlgorithmIdentification("p", "1"),
        segments=(Segment("s", "S", codes.SCT.Organ, codes.SCT.Lung, wrong),),
    )
    with pytest.raises(OutputBuildError, match="masks must cover the input"):
        build_outputs(findings, ct_input, context())
    sources = list(ct_input.sources)
    sources[0] = SourceFrame(sources[0].sop_class_uid, sources[0].sop_instance_uid, 1)
    mixed = dataclasses.replace(ct_input, sources=tuple(sources))
    with pytest.raises(SegmentationGeometryError, match="mixes single-frame and multi-frame"):
        build_outputs(full_findings(mixed), mixed, context())


def test_odd_sources_do_not_break_building(tmp_path):
    """Missing Type 2 attributes, a non-ASCII name without SpecificCharacterSet, private tags."""
    files = write_synthetic_ct(
        tmp_path / "odd",
        slices=4,
        size=32,
        PatientBirthDate=None,
        PatientSex=None,
        AccessionNumber=None,
        StudyID=None,
        ReferringPhysicianName=None,
        SpecificCharacterSet=None,
        PatientName="Müller^Jürgen",
    )
    for path in files:  # a private block
        ds = pydicom.dcmread(path)
        block = ds.private_block(0x0029, "ACME 1.0", create=True)
        block.add_new(0x01, "LO", "secret vendor value")
        ds.save_as(path)
    source = load_plugin_input(files)
    findings = full_findings(source)
    before = [str(header) for header in source.headers]
    results = build_outputs(findings, source, context())
    assert [str(header) for header in source.headers] == before  # the input is not touched
    for result in results:
        ds = written(result, tmp_path)
        for keyword in (
            "PatientBirthDate",
            "PatientSex",
            "AccessionNumber",
            "StudyID",
            "ReferringPhysicianName",
        ):
            assert keyword in ds and ds[keyword].is_empty, keyword
        assert str(ds.PatientName) == "Müller^Jürgen"
        assert ds.SpecificCharacterSet == "ISO_IR 100"
        assert not any(element.tag.is_private for element in ds)


def test_report_text_beyond_the_source_charset_switches_to_utf8(ct_input, tmp_path):
    findings = dataclasses.replace(
        full_findings(ct_input),
        report=full_findings(ct_input).report.__class__(
            findings="Узел 12 мм в правом лёгком.", impression="肺結節"
        ),
    )
    results = build_outputs(findings, ct_input, context(outputs=(OutputKind.TEXT_SR,)))
    ds = written(results[0], tmp_path)
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    sections = [i for i in ds.ContentSequence if i.ValueType == "CONTAINER"]
    assert sections[1].ContentSequence[0].TextValue == "肺結節"
    assert ds.PatientName == ct_input.headers[0].PatientName


def test_context_validation_messages():
    with pytest.raises(ValueError, match="job_id"):
        context(job_id="")
    with pytest.raises(ValueError, match="repeat"):
        context(outputs=(OutputKind.SR, OutputKind.SR))
    with pytest.raises(ValueError, match="not a valid UID"):
        PredecessorDocument("1.2", "1.2.3", "x.y", "1.2.840.10008.5.1.4.1.1.88.33")


def test_report_only_findings_give_a_text_sr_and_nothing_else(ct_input):
    """A report-drafting plugin returns text alone: no SEG and no empty TID 1500 SR."""
    findings = Findings(
        algorithm=AlgorithmIdentification("report-plugin", "1.0.0"),
        report=full_findings(ct_input).report,
    )
    results = build_outputs(findings, ct_input, context())
    assert [result.kind for result in results] == [OutputKind.TEXT_SR]
