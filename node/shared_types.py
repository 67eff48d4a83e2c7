"""Types that several stages use, in one place below all of them, so that no stage imports
another (or the configuration) for a type.

- ``RetryPolicy``: backoff and dead letter, for jobs (``node.jobs``, ``node.vendors``) and for
  deliveries (``node.dispatch``).
- What results a job makes and who takes which: ``OutputKind`` (a destination's ``send_as``,
  the output builders, the job stage; the kinds a product's own DICOM is relayed as are the
  same, ``node.outputs.relay``), ``KIND_BY_SOP_CLASS``, ``ViewerProfile``, ``SourceKind`` and
  ``PROFILE_DEFAULTS``.

It imports nothing of the node's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from pydicom.uid import (
    BasicTextSRStorage,
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    EncapsulatedPDFStorage,
    EnhancedSRStorage,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    MultiFrameSingleBitSecondaryCaptureImageStorage,
    MultiFrameTrueColorSecondaryCaptureImageStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)

__all__ = [
    "KIND_BY_SOP_CLASS",
    "PROFILE_DEFAULTS",
    "OutputKind",
    "RetryPolicy",
    "SourceKind",
    "ViewerProfile",
]


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: ``backoff_s * 2**(attempts-1)``, capped, dead after max_attempts."""

    max_attempts: int
    backoff_s: float
    backoff_max_s: float

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.backoff_s < 0 or self.backoff_max_s < 0:
            raise ValueError("backoff_s and backoff_max_s must be >= 0")

    def delay_after(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt (1-based)."""
        return min(self.backoff_max_s, self.backoff_s * 2 ** max(0, attempts - 1))


class OutputKind(StrEnum):
    SEG = "seg"
    SR = "sr"
    TEXT_SR = "text_sr"
    BURNED_IN_SC = "burned_in_sc"


#: The SOP classes a result can have (the node's own, or a product's DICOM it relays), and the
#: kind each is sent as: a product's PDF report goes where text reports go.
KIND_BY_SOP_CLASS: Mapping[str, OutputKind] = MappingProxyType(
    {
        SegmentationStorage: OutputKind.SEG,
        "1.2.840.10008.5.1.4.1.1.66.7": OutputKind.SEG,  # Label Map Segmentation
        ComprehensiveSRStorage: OutputKind.SR,
        Comprehensive3DSRStorage: OutputKind.SR,
        EnhancedSRStorage: OutputKind.SR,
        BasicTextSRStorage: OutputKind.TEXT_SR,
        EncapsulatedPDFStorage: OutputKind.TEXT_SR,
        SecondaryCaptureImageStorage: OutputKind.BURNED_IN_SC,
        MultiFrameGrayscaleByteSecondaryCaptureImageStorage: OutputKind.BURNED_IN_SC,
        MultiFrameGrayscaleWordSecondaryCaptureImageStorage: OutputKind.BURNED_IN_SC,
        MultiFrameSingleBitSecondaryCaptureImageStorage: OutputKind.BURNED_IN_SC,
        MultiFrameTrueColorSecondaryCaptureImageStorage: OutputKind.BURNED_IN_SC,
    }
)


class ViewerProfile(StrEnum):
    """The viewer a destination's readers use; it picks the destination's default output kinds.

    ``ohif``: OHIF 3.13 crashes on a SEG over a projection radiograph, so a radiograph's
    segmentation reaches it burned into secondary captures instead.
    """

    GENERIC = "generic"
    OHIF = "ohif"


class SourceKind(StrEnum):
    """What a job's series is, as far as viewers care: a projection X-ray (CR, DX, MG, ...),
    whose SEG some viewers cannot show, or anything else (CT, MR, ...), as before profiles."""

    RADIOGRAPH = "radiograph"
    CROSS_SECTIONAL = "cross_sectional"


_SEG_SR_TEXT = (OutputKind.SEG, OutputKind.SR, OutputKind.TEXT_SR)

# Default output kinds per (profile, source kind) where a destination lists no send_as.
# generic: a radiograph also gets the burned-in SC (one image, shown by every viewer, while few
# show a SEG over a radiograph); the SEG stays, it is the lossless record the SR points at.
# A CT or MR gets no SC by default: one image per touched slice, duplicating the SEG.
PROFILE_DEFAULTS: Mapping[tuple[ViewerProfile, SourceKind], tuple[OutputKind, ...]] = (
    MappingProxyType(
        {
            (ViewerProfile.GENERIC, SourceKind.CROSS_SECTIONAL): _SEG_SR_TEXT,
            (ViewerProfile.GENERIC, SourceKind.RADIOGRAPH): (
                *_SEG_SR_TEXT,
                OutputKind.BURNED_IN_SC,
            ),
            (ViewerProfile.OHIF, SourceKind.CROSS_SECTIONAL): _SEG_SR_TEXT,
            (ViewerProfile.OHIF, SourceKind.RADIOGRAPH): (
                OutputKind.SR,
                OutputKind.TEXT_SR,
                OutputKind.BURNED_IN_SC,
            ),
        }
    )
)
