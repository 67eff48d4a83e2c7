"""What the output builders need to know about the job, beyond the findings and the source."""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.sr.coding import Code
from pydicom.uid import UID

import node
from node.output_settings import (
    OutputsConfig,
    OverlappingSegments,
    SegTransferSyntax,
    SegType,
    check_seg_encoding,
)
from node.shared_types import OutputKind

# Series number offset per output kind: each kind is its own series (a series holds one
# modality), numbered from OutputContext.series_number.
SERIES_OFFSET: dict[OutputKind, int] = {
    OutputKind.SEG: 0,
    OutputKind.SR: 1,
    OutputKind.TEXT_SR: 2,
    OutputKind.BURNED_IN_SC: 3,
}


@dataclass(frozen=True)
class PredecessorDocument:
    """The SR a new one supersedes (same study; from the previous study version's job)."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str

    def __post_init__(self) -> None:
        for name in (
            "study_instance_uid",
            "series_instance_uid",
            "sop_instance_uid",
            "sop_class_uid",
        ):
            value = getattr(self, name)
            if not value or not UID(value).is_valid:
                raise ValueError(f"PredecessorDocument.{name} is not a valid UID: {value!r}")


@dataclass(frozen=True)
class SegOptions:
    """How the SEG is written (node.yaml ``outputs``; defaults as ``OutputsConfig``'s).

    ``overlapping``: EXCLUSIVE leaves a voxel several segments claim in the smallest of them
    (``seg_overlap``), NESTED keeps every mask whole. ``omit_empty_frames`` leaves out the
    frames where a segment has no pixel; every frame kept still references its source image.
    """

    overlapping: OverlappingSegments = OverlappingSegments.EXCLUSIVE
    seg_type: SegType = SegType.BINARY
    transfer_syntax: SegTransferSyntax = SegTransferSyntax.EXPLICIT_VR_LITTLE_ENDIAN
    omit_empty_frames: bool = True

    def __post_init__(self) -> None:
        check_seg_encoding(self.seg_type, self.transfer_syntax, self.overlapping)

    @classmethod
    def from_config(cls, config: OutputsConfig) -> SegOptions:
        return cls(
            overlapping=config.overlapping_segments,
            seg_type=config.seg_type,
            transfer_syntax=config.seg_transfer_syntax,
            omit_empty_frames=config.seg_omit_empty_frames,
        )


@dataclass(frozen=True)
class OutputContext:
    """One job's identity and labelling choices.

    ``job_id`` seeds every UID (see ``uids``), so it must be the job's stable key (study,
    route, plugin), not a per-attempt or per-version one: a re-run replaces its results.
    ``series_number`` is the SEG's series number; the SR, text SR and burned-in series
    follow it (``SERIES_OFFSET``).
    ``fractional_segmentation`` asks for a FRACTIONAL SEG where every mask is a
    probability map; otherwise probability masks are thresholded at 0.5 into a BINARY SEG.
    ``seg`` says how the SEG is encoded.
    """

    job_id: str
    plugin_name: str
    plugin_version: str
    series_number: int = 9000
    outputs: tuple[OutputKind, ...] = (OutputKind.SEG, OutputKind.SR, OutputKind.TEXT_SR)
    not_for_diagnostic_use: bool = True
    predecessor: PredecessorDocument | None = None
    ainode_version: str = node.__version__
    institution_name: str | None = None
    fractional_segmentation: bool = False
    procedure_reported: Code | None = None
    seg: SegOptions = SegOptions()

    def __post_init__(self) -> None:
        if not self.job_id:
            raise ValueError("OutputContext.job_id must not be empty")
        if not self.plugin_name or not self.plugin_version:
            raise ValueError("OutputContext needs the plugin name and version")
        if not 1 <= self.series_number <= 2**31 - 1 - max(SERIES_OFFSET.values()):
            raise ValueError(f"series_number {self.series_number} is out of range")
        kinds = tuple(OutputKind(kind) for kind in self.outputs)
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"output kinds repeat: {[k.value for k in kinds]}")
        object.__setattr__(self, "outputs", kinds)

    @classmethod
    def from_config(
        cls,
        config: OutputsConfig,
        *,
        job_id: str,
        plugin_name: str,
        plugin_version: str,
        outputs: tuple[OutputKind, ...] = (OutputKind.SEG, OutputKind.SR, OutputKind.TEXT_SR),
        predecessor: PredecessorDocument | None = None,
        fractional_segmentation: bool = False,
    ) -> OutputContext:
        """The context for a job, labelled as node.yaml's ``outputs`` section says."""
        return cls(
            job_id=job_id,
            plugin_name=plugin_name,
            plugin_version=plugin_version,
            series_number=config.series_number_base,
            outputs=outputs,
            not_for_diagnostic_use=config.not_for_diagnostic_use,
            predecessor=predecessor,
            institution_name=config.institution_name,
            fractional_segmentation=fractional_segmentation,
            seg=SegOptions.from_config(config),
        )

    def wants(self, kind: OutputKind) -> bool:
        return kind in self.outputs

    def series_number_of(self, kind: OutputKind) -> int:
        return self.series_number + SERIES_OFFSET[kind]

    def series_description(self, kind: OutputKind) -> str:
        """Readable and at most 64 characters (LO), e.g. "AI ct-lung-nodule 1.2.0 SEG"."""
        label = {
            OutputKind.SEG: "SEG",
            OutputKind.SR: "measurements",
            OutputKind.TEXT_SR: "report",
            OutputKind.BURNED_IN_SC: "overlay",
        }[kind]
        suffix = " NOT FOR DIAGNOSTIC USE" if self.not_for_diagnostic_use else ""
        text = f"AI {self.plugin_name} {self.plugin_version} {label}"
        return (text[: 64 - len(suffix)] + suffix).strip()

    @property
    def software_versions(self) -> list[str]:
        return [f"ainode {self.ainode_version}", f"{self.plugin_name} {self.plugin_version}"]

    @property
    def content_label(self) -> str:
        """CS, at most 16 characters, upper case: e.g. "AI_CT_LUNG_NODUL"."""
        name = self.plugin_name.upper()
        cleaned = "".join(c if c.isascii() and c.isalnum() else "_" for c in name)
        return ("AI_" + cleaned)[:16]
