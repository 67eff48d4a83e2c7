"""Findings as a TID 1500 Measurement Report (highdicom Comprehensive SR) that viewers draw.

One measurement group per Finding (tracking id and UID, finding type and site, measurements in
UCUM units, qualitative evaluations). A finding with a segment is a volumetric ROI group
(TID 1411) that references the SEG segment and the source images it lies on, also on
single-frame sources: TID 1410's segmentation-frame reference names both a frame and a
segment, which the Image Reference Macro forbids (dciodvfy rejects it). A finding with an
outline (``Finding.region``) is a planar ROI group (TID 1410) with that image region; any
other finding is a TID 1501 group listing the source images it was measured on.

Every measurement made along a line carries that line as image coordinates (SCOORD, INFERRED
FROM, on its source image; ``sr_graphics``): a viewer such as OHIF places a group only by its
coordinates, and lists its values beside what it draws. Study-level results (a nodule count,
"no nodule") go in the document's Qualitative Evaluations container (TID 1500 row 12), not in
a measurement group that no viewer can place. A re-run of a newer study version keeps the
report's UIDs (``uids``), so it replaces the report; a report it supersedes that has other
UIDs (one written by an ainode whose UIDs named the study version) is named in the
Predecessor Documents Sequence.

Comprehensive SR, not Comprehensive 3D SR: 2D coordinates on source images and SEG
references, and Comprehensive SR is the class more PACS and viewers accept.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from models.api import Finding, Findings, Measurement, PluginInput, QualitativeEvaluation, Segment
from node.outputs.context import OutputContext, PredecessorDocument
from node.outputs.errors import OutputBuildError, check_source_classes, refused_by_highdicom
from node.outputs.identity import copy_identity, prepared_header
from node.outputs.procedure import procedure_reported
from node.outputs.seg import MANUFACTURER, segment_numbers
from node.outputs.sr_graphics import check_placement, image_region, measurement_coordinates
from node.outputs.uids import ResultUids, device_observer_uid
from node.shared_types import OutputKind

# TID 1500 row 12: the document's qualitative evaluations (study-level results)
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")


def observation_context(context: OutputContext) -> hd.sr.ObservationContext:
    """The plugin as the observing device (same UID for every job of one plugin version)."""
    return hd.sr.ObservationContext(
        observer_person_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=device_observer_uid(context.plugin_name, context.plugin_version),
                name=context.plugin_name[:64],
                manufacturer_name=MANUFACTURER,
                model_name=f"{context.plugin_name} {context.plugin_version}"[:64],
            ),
        )
    )


def _evaluations(items: Sequence[QualitativeEvaluation]) -> list[hd.sr.QualitativeEvaluation]:
    """Qualitative evaluations; a confidence becomes a Probability (0-1) property of it."""
    evaluations = []
    for item in items:
        evaluation = hd.sr.QualitativeEvaluation(item.concept, item.value)
        if item.confidence is not None:
            evaluation[0].ContentSequence = [
                hd.sr.NumContentItem(
                    name=codes.DCM.Probability,
                    value=item.confidence,
                    unit=Code("1", "UCUM", "no units"),
                    relationship_type=hd.sr.RelationshipTypeValues.HAS_PROPERTIES,
                )
            ]
        evaluations.append(evaluation)
    return evaluations


def _measurements(items: Sequence[Measurement], source: PluginInput) -> list[hd.sr.Measurement]:
    """TID 300 measurements; one measured along a line is INFERRED FROM that line."""
    return [
        hd.sr.Measurement(
            name=m.concept,
            value=m.value,
            unit=m.unit,
            referenced_coordinates=(
                [measurement_coordinates(m.graphic, source)] if m.graphic is not None else None
            ),
        )
        for m in items
    ]


def _by_instance(source: PluginInput, indices: Sequence[int]) -> dict[tuple[str, str], list[int]]:
    """(SOP class, SOP instance) -> frame numbers (empty for single-frame instances)."""
    frames: dict[tuple[str, str], list[int]] = {}
    for index in indices:
        frame = source.sources[index]
        numbers = frames.setdefault((frame.sop_class_uid, frame.sop_instance_uid), [])
        if frame.frame_number is not None:
            numbers.append(frame.frame_number)
    return frames


def _source_images(
    source: PluginInput, indices: Sequence[int] | None = None
) -> list[hd.sr.SourceImageForMeasurementGroup]:
    """One reference per source instance (multi-frame: with the frames meant), of the given
    input frames or of all of them."""
    chosen = range(len(source.sources)) if indices is None else indices
    return [
        hd.sr.SourceImageForMeasurementGroup(
            referenced_sop_class_uid=sop_class,
            referenced_sop_instance_uid=sop_instance,
            referenced_frame_numbers=sorted(numbers) or None,
        )
        for (sop_class, sop_instance), numbers in _by_instance(source, chosen).items()
    ]


def _referenced_segment(
    segmentation: Dataset, number: int, segment: Segment, source: PluginInput
) -> hd.sr.ReferencedSegment:
    """The SEG segment with the source images it lies on (the source series when empty).

    Listing only the frames the segment touches keeps the report small on long series (a
    nodule on 10 of 300 slices names 10 images, not 300) and tells a reader where to look.
    No frame numbers on the SEG reference itself: the Image Reference Macro allows a
    segment number or frame numbers, not both.
    """
    touched = segment.frames_present
    if len(touched) == 0:
        return hd.sr.ReferencedSegment(
            sop_class_uid=segmentation.SOPClassUID,
            sop_instance_uid=segmentation.SOPInstanceUID,
            segment_number=number,
            source_series=hd.sr.SourceSeriesForSegmentation(source.series_instance_uid),
        )
    return hd.sr.ReferencedSegment(
        sop_class_uid=segmentation.SOPClassUID,
        sop_instance_uid=segmentation.SOPInstanceUID,
        segment_number=number,
        source_images=[
            hd.sr.SourceImageForSegmentation(
                referenced_sop_class_uid=sop_class,
                referenced_sop_instance_uid=sop_instance,
                referenced_frame_numbers=sorted(numbers) or None,
            )
            for (sop_class, sop_instance), numbers in _by_instance(source, touched).items()
        ],
    )


def _finding_groups(
    finding: Finding,
    findings: Findings,
    source: PluginInput,
    segmentation: Dataset | None,
    uids: ResultUids,
    algorithm: hd.sr.AlgorithmIdentification,
) -> list[Dataset]:
    """The finding's measurement group, and a second one for its lines where needed.

    TID 1410/1411 groups (a region or a segment) may not hold measurements with their own
    coordinates, so the measurements made along a line go in a TID 1501 group of the same
    tracking identifier and UID: one finding, two groups, as TID 1500 intends tracking UIDs
    (OHIF merges groups by it and draws the lines with every value listed).
    """
    roi = finding.region is not None or (
        finding.segment_key is not None and segmentation is not None
    )
    drawn = [m for m in finding.measurements if m.graphic is not None] if roi else []
    plain = [m for m in finding.measurements if not (roi and m.graphic is not None)]
    common = {
        "tracking_identifier": hd.sr.TrackingIdentifier(
            uid=uids.tracking(finding.tracking_id), identifier=finding.tracking_id[:64]
        ),
        "finding_type": finding.finding_type,
        "finding_sites": (
            [hd.sr.FindingSite(finding.finding_site)] if finding.finding_site else None
        ),
        "algorithm_id": algorithm,
    }
    lines = (
        [
            hd.sr.MeasurementsAndQualitativeEvaluations(
                source_images=_source_images(
                    source, sorted({m.graphic.frame for m in drawn if m.graphic})
                ),
                measurements=_measurements(drawn, source),
                **common,
            )
        ]
        if drawn
        else []
    )
    common["measurements"] = _measurements(plain, source) or None
    common["qualitative_evaluations"] = _evaluations(finding.evaluations) or None
    if finding.region is not None:
        planar = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            referenced_region=image_region(finding.region, source), **common
        )
        return [planar, *lines]
    if finding.segment_key is None:
        return [
            hd.sr.MeasurementsAndQualitativeEvaluations(
                source_images=_source_images(source), **common
            )
        ]
    segment = findings.segment(finding.segment_key)
    if segmentation is None:  # no SEG is made (not asked for): name the images it lies on
        touched = segment.frames_present
        return [
            hd.sr.MeasurementsAndQualitativeEvaluations(
                source_images=_source_images(source, touched if len(touched) else None),
                finding_category=segment.category,
                **common,
            )
        ]
    number = segment_numbers(findings)[finding.segment_key]
    volumetric = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        referenced_segment=_referenced_segment(segmentation, number, segment, source),
        finding_category=segment.category,
        **common,
    )
    return [volumetric, *lines]


def _predecessor_dataset(predecessor: PredecessorDocument) -> Dataset:
    reference = Dataset()
    reference.StudyInstanceUID = predecessor.study_instance_uid
    reference.SeriesInstanceUID = predecessor.series_instance_uid
    reference.SOPInstanceUID = predecessor.sop_instance_uid
    reference.SOPClassUID = predecessor.sop_class_uid
    return reference


def _study_evaluations(findings: Findings) -> hd.sr.ContainerContentItem | None:
    """The document's Qualitative Evaluations: each study-level evaluation as CODE, each
    study-level measurement as TEXT ("5", "0.52 ratio"): TID 1500 row 12 holds only CODE
    and TEXT items."""
    if not (findings.study_evaluations or findings.study_measurements):
        return None
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    items: list[Dataset] = []
    for evaluation in _evaluations(findings.study_evaluations):
        items.extend(evaluation)
    for measurement in findings.study_measurements:
        unit = "" if measurement.unit.value == "1" else f" {measurement.unit.meaning}"
        items.append(
            hd.sr.TextContentItem(
                name=measurement.concept,
                value=f"{measurement.value:g}{unit}",
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    container.ContentSequence = items
    return container


def _report(
    findings: Findings,
    source: PluginInput,
    context: OutputContext,
    groups: list[Dataset],
    algorithm: hd.sr.AlgorithmIdentification,
    uids: ResultUids,
) -> hd.sr.MeasurementReport:
    """TID 1500 with the finding groups (row 8) and the study-level results (row 12).

    highdicom 0.28 requires at least one measurement group, while TID 1500 needs only one of
    rows 8 and 12: a report of study-level results alone (no nodule found) is built around a
    placeholder group whose Imaging Measurements container is then taken out again.
    """
    evaluations = _study_evaluations(findings)
    placeholder = (
        []
        if groups
        else [
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=uids.tracking("placeholder"), identifier="placeholder"
                ),
                algorithm_id=algorithm,
            )
        ]
    )
    report = hd.sr.MeasurementReport(
        observation_context=observation_context(context),
        procedure_reported=procedure_reported(source, context),
        imaging_measurements=groups or placeholder,
        title=codes.DCM.ImagingMeasurementReport,
    )
    root = report[0]
    if placeholder:
        root.ContentSequence = [
            item
            for item in root.ContentSequence
            if item.ConceptNameCodeSequence[0].CodeValue != codes.DCM.ImagingMeasurements.value
        ]
    if evaluations is not None:
        root.ContentSequence.append(evaluations)
    return report


def build_measurement_report(
    findings: Findings,
    source: PluginInput,
    context: OutputContext,
    segmentation: Dataset | None = None,
) -> hd.sr.ComprehensiveSR:
    """The TID 1500 report of ``findings``; ``segmentation`` is the SEG built from them, or
    None where no SEG is made: segment findings then name the source images they lie on."""
    if not source.headers:
        raise OutputBuildError("PluginInput.headers is empty: the report needs the source headers")
    check_source_classes(source, "a TID 1500 report")
    check_placement(findings, source)
    uids = ResultUids(context.job_id)
    algorithm = hd.sr.AlgorithmIdentification(
        name=findings.algorithm.name, version=findings.algorithm.version
    )
    headers = [prepared_header(header) for header in source.headers]
    evidence = ([segmentation] if segmentation is not None else []) + headers
    sop_instance_uid = uids.instance(OutputKind.SR)
    predecessor = context.predecessor
    if predecessor is not None and predecessor.sop_instance_uid == sop_instance_uid:
        predecessor = None  # the same report, replaced in place: not its own predecessor
    previous = [_predecessor_dataset(predecessor)] if predecessor else None
    with refused_by_highdicom("the TID 1500 report of these findings"):
        groups = [
            group
            for finding in findings.findings
            for group in _finding_groups(finding, findings, source, segmentation, uids, algorithm)
        ]
        report = _report(findings, source, context, groups, algorithm, uids)
        sr = hd.sr.ComprehensiveSR(
            evidence=evidence,
            content=report[0],
            series_instance_uid=uids.series(OutputKind.SR),
            series_number=context.series_number_of(OutputKind.SR),
            sop_instance_uid=sop_instance_uid,
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=context.plugin_name[:64],
            software_versions=context.software_versions,
            is_complete=True,
            institution_name=context.institution_name,
            series_description=context.series_description(OutputKind.SR),
            previous_versions=previous,
        )
    copy_identity(sr, headers[0])
    return sr
