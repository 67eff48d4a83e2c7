"""The one entry point of the outputs stage: Findings + source + context -> result instances."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydicom.dataset import Dataset
from pydicom.tag import Tag

from models.api import Findings, PluginInput
from node.outputs.burned_in import build_burned_in
from node.outputs.context import OutputContext
from node.outputs.encoding import preencode_frame_groups
from node.outputs.seg import build_segmentation
from node.outputs.sr import build_measurement_report
from node.outputs.text_sr import build_text_report
from node.shared_types import OutputKind

CODING_SCHEME_DESIGNATOR = Tag("CodingSchemeDesignator")
_Built = TypeVar("_Built")


@dataclass(frozen=True)
class ResultInstance:
    """One result object, ready to store and send."""

    kind: OutputKind
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    dataset: Dataset

    @classmethod
    def of(cls, kind: OutputKind, dataset: Dataset) -> ResultInstance:
        return cls(
            kind=kind,
            sop_class_uid=str(dataset.SOPClassUID),
            sop_instance_uid=str(dataset.SOPInstanceUID),
            series_instance_uid=str(dataset.SeriesInstanceUID),
            dataset=dataset,
        )

    def write(self, path: Path) -> Path:
        """Write as a Part-10 file (``path`` may be a folder: then ``<kind>-<uid>.dcm``)."""
        path = Path(path)
        if path.is_dir():
            path = path / f"{self.kind.value}-{self.sop_instance_uid}.dcm"
        self.dataset.save_as(path, enforce_file_format=True)
        return path


def build_outputs(
    findings: Findings, source: PluginInput, context: OutputContext
) -> tuple[ResultInstance, ...]:
    """Every result the context asks for and the findings can fill.

    A SEG needs segments, a text SR needs report text, a burned-in SC needs segments, a TID
    1500 SR needs at least one measurement group (a finding, or a study-level measurement or
    evaluation, such as a nodule count of zero); kinds the findings cannot fill are skipped,
    not faked. The SR references SEG segments only when the SEG is among the results, so it
    never points at an object nobody gets.
    Raises ``OutputBuildError`` where the findings cannot be written over this source (its
    ``SegmentationGeometryError`` when the source geometry cannot be described by a SEG).
    """
    return tuple(iter_outputs(findings, source, context))


def iter_outputs(
    findings: Findings, source: PluginInput, context: OutputContext
) -> Iterator[ResultInstance]:
    """``build_outputs`` one result at a time, SEG first; each is final when it is yielded,
    so a caller can write the SEG (100 MB on a long CT) while the reports are built."""
    segmentation = None
    if findings.segments and context.wants(OutputKind.SEG):
        segmentation = _quietly(build_segmentation, findings, source, context)
        # writing it is then one pass over bytes instead of pydicom encoding 3,900 nested
        # items (same bytes either way); the reports below read only its UIDs
        preencode_frame_groups(segmentation)
        yield ResultInstance.of(OutputKind.SEG, segmentation)
    if context.wants(OutputKind.SR) and _has_measurement_groups(findings):
        report = _quietly(build_measurement_report, findings, source, context, segmentation)
        identify_local_coding_schemes(report)
        yield ResultInstance.of(OutputKind.SR, report)
    if context.wants(OutputKind.TEXT_SR) and findings.report is not None:
        text_report = _quietly(build_text_report, findings, source, context)
        identify_local_coding_schemes(text_report)
        yield ResultInstance.of(OutputKind.TEXT_SR, text_report)
    if context.wants(OutputKind.BURNED_IN_SC) and findings.segments:
        for dataset in _quietly(build_burned_in, findings, source, context):
            yield ResultInstance.of(OutputKind.BURNED_IN_SC, dataset)


def _quietly(builder: Callable[..., _Built], *args: Any) -> _Built:
    with warnings.catch_warnings():
        # highdicom warns about single-component person names copied from the source and
        # quotes the name; patient names must not reach logs, and the value is the source's
        warnings.filterwarnings(
            "ignore", message=r"The string .* is unlikely to represent the intended person"
        )
        return builder(*args)


def identify_local_coding_schemes(dataset: Dataset) -> None:
    """Name every local ("99…") coding scheme a report's codes use in the Coding Scheme
    Identification Sequence, which the SOP Common module requires (Type 1C) once a private
    scheme appears, so a reader can tell whose codes they are."""
    local = sorted(
        {
            str(element.value)
            for element in dataset.iterall()
            if element.tag == CODING_SCHEME_DESIGNATOR and str(element.value).startswith("99")
        }
    )
    if not local:
        return
    items = []
    for designator in local:
        item = Dataset()
        item.CodingSchemeDesignator = designator
        item.CodingSchemeName = f"{designator} local codes of ainode and its plugins"
        item.CodingSchemeResponsibleOrganization = "ainode"
        items.append(item)
    dataset.CodingSchemeIdentificationSequence = items


def _has_measurement_groups(findings: Findings) -> bool:
    return bool(findings.findings or findings.study_measurements or findings.study_evaluations)
