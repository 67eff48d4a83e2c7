"""A plugin's draft report text as an Enhanced SR (TID 2000 Basic Diagnostic Imaging Report).

Findings and Impressions sections; the finding text is inferred from key images: for each
segment the frame where it is largest, or the first input frame when there are no segments.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from models.api import Findings, PluginInput, Report, Segment, SourceFrame
from node.outputs.context import OutputContext
from node.outputs.errors import OutputBuildError, check_source_classes, refused_by_highdicom
from node.outputs.identity import copy_identity, prepared_header
from node.outputs.seg import MANUFACTURER
from node.outputs.uids import ResultUids
from node.shared_types import OutputKind

ENGLISH = hd.sr.CodedConcept("en-US", "RFC5646", "English (United States)")


def key_frames(findings: Findings, source: PluginInput) -> list[SourceFrame]:
    """One frame per non-empty segment (largest area), else the first frame; no repeats."""
    chosen: list[int] = []
    for segment in findings.segments:
        largest = _largest_frame(segment)
        if largest is not None and largest not in chosen:
            chosen.append(largest)
    return [source.sources[i] for i in (chosen or [0])]


def _largest_frame(segment: Segment) -> int | None:
    """The first of the frames with the most mask pixels, None for an empty mask (only the
    frames with any pixel are counted: a nodule touches a few of hundreds)."""
    box = segment.box  # counted in the box: a boxed mask is never expanded
    largest, largest_area = None, 0
    for index in segment.frames_present:
        area = np.count_nonzero(box.binary[index - box.origin[0]])
        if area > largest_area:
            largest, largest_area = int(index), area
    return largest


def _image_reference(frame: SourceFrame) -> hd.sr.ImageContentItem:
    return hd.sr.ImageContentItem(
        name=codes.DCM.SourceImage,
        referenced_sop_class_uid=frame.sop_class_uid,
        referenced_sop_instance_uid=frame.sop_instance_uid,
        referenced_frame_numbers=frame.frame_number,
        relationship_type=hd.sr.RelationshipTypeValues.INFERRED_FROM,
    )


def build_text_report(
    findings: Findings, source: PluginInput, context: OutputContext
) -> hd.sr.EnhancedSR:
    """The text SR of ``findings.report`` (which must be set)."""
    if findings.report is None:
        raise OutputBuildError("build_text_report needs Findings.report")
    if not source.headers:
        raise OutputBuildError("PluginInput.headers is empty: the report needs the source headers")
    check_source_classes(source, "a text report")
    uids = ResultUids(context.job_id)
    headers: list[Dataset] = [prepared_header(header) for header in source.headers]
    key = key_frames(findings, source)
    with refused_by_highdicom("the text report of these findings"):
        sr = hd.sr.EnhancedSR(
            evidence=headers,
            content=_content(findings.report, key),
            series_instance_uid=uids.series(OutputKind.TEXT_SR),
            series_number=context.series_number_of(OutputKind.TEXT_SR),
            sop_instance_uid=uids.instance(OutputKind.TEXT_SR),
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=context.plugin_name[:64],
            software_versions=context.software_versions,
            is_complete=True,
            institution_name=context.institution_name,
            series_description=context.series_description(OutputKind.TEXT_SR),
        )
    copy_identity(sr, headers[0])
    return sr


def _content(report: Report, key: list[SourceFrame]) -> hd.sr.ContainerContentItem:
    """TID 2000: the findings text, referencing the key frames, and the impression."""
    finding_text = hd.sr.TextContentItem(
        name=codes.DCM.Finding,
        value=report.findings,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    finding_text.ContentSequence = [_image_reference(f) for f in key]
    findings_section = hd.sr.ContainerContentItem(
        name=codes.DCM.Findings,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        template_id="2001",
    )
    findings_section.ContentSequence = [finding_text]
    impressions_section = hd.sr.ContainerContentItem(
        name=codes.DCM.Impressions,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        template_id="2001",
    )
    impressions_section.ContentSequence = [
        hd.sr.TextContentItem(
            name=codes.DCM.Impression,
            value=report.impression,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
    ]
    root = hd.sr.ContainerContentItem(name=codes.LN.DiagnosticImagingReport, template_id="2000")
    root.ContentSequence = [
        hd.sr.CodeContentItem(
            name=codes.DCM.LanguageOfContentItemAndDescendants,
            value=ENGLISH,
            relationship_type=hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD,
        ),
        findings_section,
        impressions_section,
    ]
    return root
