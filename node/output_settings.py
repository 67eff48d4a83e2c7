"""node.yaml's ``outputs``: how result series are labelled and how a SEG is encoded, with the
check that refuses a combination highdicom cannot write (at load, not at the first job)."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType

from pydantic import Field, model_validator
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from node.config_fields import Section

__all__ = [
    "BINARY_SEG_TRANSFER_SYNTAXES",
    "OutputsConfig",
    "OverlappingSegments",
    "SegTransferSyntax",
    "SegType",
    "check_seg_encoding",
]


class OverlappingSegments(StrEnum):
    """How a SEG writes voxels that several segments claim (``node.outputs.seg_overlap``)."""

    EXCLUSIVE = "exclusive"  # the smallest segment keeps them: a nodule stays out of its lung
    NESTED = "nested"  # every segment keeps its whole mask; segments overlap


class SegType(StrEnum):
    """SEG storage class: one bit-packed frame per segment, or one label frame per slice."""

    BINARY = "binary"  # Segmentation Storage, what viewers read
    LABELMAP = "labelmap"  # Label Map Segmentation Storage (2024), few readers yet


class SegTransferSyntax(StrEnum):
    """Transfer syntaxes a SEG is written in. highdicom 0.28 encodes BINARY pixels only
    uncompressed or as JPEG 2000; deflate compresses the whole dataset once it is encoded
    (explicit VR little endian, then zlib), so every reader that inflates reads it as an
    uncompressed SEG."""

    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "deflated_explicit_vr_little_endian"
    EXPLICIT_VR_LITTLE_ENDIAN = "explicit_vr_little_endian"
    JPEG2000_LOSSLESS = "jpeg2000_lossless"
    JPEG_LS_LOSSLESS = "jpeg_ls_lossless"
    RLE_LOSSLESS = "rle_lossless"

    @property
    def uid(self) -> str:
        return _SEG_TRANSFER_SYNTAX_UIDS[self]


_SEG_TRANSFER_SYNTAX_UIDS: Mapping[SegTransferSyntax, str] = MappingProxyType(
    {
        SegTransferSyntax.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN: DeflatedExplicitVRLittleEndian,
        SegTransferSyntax.EXPLICIT_VR_LITTLE_ENDIAN: ExplicitVRLittleEndian,
        SegTransferSyntax.JPEG2000_LOSSLESS: JPEG2000Lossless,
        SegTransferSyntax.JPEG_LS_LOSSLESS: JPEGLSLossless,
        SegTransferSyntax.RLE_LOSSLESS: RLELossless,
    }
)


BINARY_SEG_TRANSFER_SYNTAXES = frozenset(
    {
        SegTransferSyntax.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
        SegTransferSyntax.EXPLICIT_VR_LITTLE_ENDIAN,
        SegTransferSyntax.JPEG2000_LOSSLESS,
    }
)


def check_seg_encoding(
    seg_type: SegType, transfer_syntax: SegTransferSyntax, overlapping: OverlappingSegments
) -> None:
    """Raise ValueError, saying what to change, for SEG settings highdicom cannot write."""
    if seg_type is SegType.BINARY and transfer_syntax not in BINARY_SEG_TRANSFER_SYNTAXES:
        raise ValueError(
            f"seg_transfer_syntax {transfer_syntax.value} cannot carry a BINARY SEG (its pixels "
            "are bit-packed); use deflated_explicit_vr_little_endian, explicit_vr_little_endian "
            "or jpeg2000_lossless, or "
            "seg_type: labelmap"
        )
    if seg_type is SegType.LABELMAP and overlapping is OverlappingSegments.NESTED:
        raise ValueError(
            "a LABELMAP SEG holds one segment per voxel, so nested segments cannot be written; "
            "set overlapping_segments: exclusive or seg_type: binary"
        )


class OutputsConfig(Section):
    """How result series are labelled and how the SEG is encoded.

    The SEG defaults are the smallest encoding that both the validator passes and OHIF draws
    through Orthanc (bench/README.md, "SEG size and encodings"): sparse and uncompressed.
    Deflate is a tenth of that and OHIF draws it, but dicom3tools 2022 cannot read it;
    JPEG 2000 validates, but Orthanc cannot hand it to OHIF uncompressed.
    """

    series_number_base: int = Field(9000, ge=1, le=2**31 - 1)
    not_for_diagnostic_use: bool = True
    institution_name: str | None = None
    overlapping_segments: OverlappingSegments = OverlappingSegments.EXCLUSIVE
    seg_type: SegType = SegType.BINARY
    seg_transfer_syntax: SegTransferSyntax = SegTransferSyntax.EXPLICIT_VR_LITTLE_ENDIAN
    seg_omit_empty_frames: bool = Field(
        True, description="leave out frames where a segment has no pixel"
    )

    @model_validator(mode="after")
    def _seg_encoding(self) -> OutputsConfig:
        check_seg_encoding(self.seg_type, self.seg_transfer_syntax, self.overlapping_segments)
        return self
