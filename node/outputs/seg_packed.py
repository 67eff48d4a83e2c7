"""The SEG's pixel fast path: binary masks bit-packed once per segment, fed to highdicom.

highdicom builds every attribute, the per-frame functional groups and the frame order as
usual; ``PrepackedSegmentation`` replaces only its pixel hooks when the pixels are
``PackedSegments``, so what it writes equals highdicom's own encoding of the 4D stack.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import highdicom as hd
import numpy as np

from models.masks import MaskBox
from node.outputs.seg_overlap import claim_order


class _PackedPlane:
    """One source position of ``PackedSegments``: each segment's packed frame there."""

    __slots__ = ("_packed", "_position")

    def __init__(self, packed: PackedSegments, position: int) -> None:
        self._packed = packed
        self._position = position

    def segment(self, number: int) -> np.ndarray:
        packed = self._packed
        frame = packed.frame(number, self._position)
        if not packed.unpack_frames:
            return frame
        # an encapsulated transfer syntax encodes the frame's pixels, not its packed bits
        rows, columns = packed.shape[1:3]
        return np.unpackbits(frame, bitorder="little").reshape(rows, columns)


def _packed_frames(box: MaskBox) -> np.ndarray:
    """The frames of the box's frame range at full frame size, bit-packed (one row each). A
    box narrower than the frame is placed on one reused plane frame by frame, so no more
    than the packed bytes are allocated."""
    frames = box.array.shape[0]
    _, rows, columns = box.volume_shape
    if box.array.shape[1:] == (rows, columns):
        flat = np.ascontiguousarray(box.binary).reshape(frames, rows * columns)
        return np.packbits(flat, axis=1, bitorder="little")
    _, y, x = box.slices
    plane = np.zeros((rows, columns), np.bool_)
    packed = np.empty((frames, rows * columns // 8), np.uint8)
    for index in range(frames):
        plane[y, x] = box.binary[index]  # outside the box the plane stays empty
        packed[index] = np.packbits(plane.reshape(-1), bitorder="little")
    return packed


class PackedSegments:
    """Binary masks bit-packed once per segment, standing in for highdicom's 4D stack.

    highdicom 0.28 takes overlapping binary masks only as one (frames, rows, columns,
    segments) bool stack: it sums that over the segments to detect overlap and packs every
    frame with pydicom's checked ``pack_bits``. For a lung CT (2 lungs + 11 nodules over
    300 slices of 512x512) that is a 1 GB stack and most of 10 s. Here each segment is packed
    once (DICOM bit order, little-endian within a byte; a ``MaskBox`` from its box's frames
    only), its non-empty frames are kept and every empty frame is the same zero buffer;
    overlap is found by ANDing the packed frames of segment pairs that share a frame. Indexing
    by source position gives a ``_PackedPlane``, which ``PrepackedSegmentation`` turns into the
    frame's bytes, or into its pixels where ``unpack_frames`` (an encapsulated transfer
    syntax, whose codec takes pixels).
    """

    ndim = 4

    def __init__(
        self, boxes: Sequence[MaskBox], frame_order: Sequence[int], unpack_frames: bool = False
    ) -> None:
        _, rows, columns = boxes[0].volume_shape
        self.shape = (len(frame_order), rows, columns, len(boxes))
        self.unpack_frames = unpack_frames
        self._empty = np.zeros(rows * columns // 8, np.uint8)
        self._frames: list[dict[int, np.ndarray]] = []
        for box in boxes:
            # one pass over the box's frames (a boxed mask's only: outside them it is empty):
            # pack every frame, then find the non-empty frames in the packed bytes (an eighth
            # of the size) rather than in the mask itself
            packed = _packed_frames(box)
            filled = np.flatnonzero(packed.view(np.uint64).any(axis=1))
            first = box.origin[0]
            by_input = dict(zip((filled + first).tolist(), packed[filled], strict=True))
            self._frames.append(
                {
                    position: by_input[frame]
                    for position, frame in enumerate(frame_order)
                    if frame in by_input
                }
            )

    @classmethod
    def packable(cls, shape: tuple[int, ...]) -> bool:
        """Whether frames of this (frames, rows, columns) shape pack to whole bytes."""
        return shape[1] * shape[2] % 64 == 0

    def frame(self, number: int, position: int) -> np.ndarray:
        """Packed bytes of segment ``number`` (1-based) at source position ``position``."""
        return self._frames[number - 1].get(position, self._empty)

    def __getitem__(self, position: int) -> _PackedPlane:
        return _PackedPlane(self, position)

    def filled_positions(self) -> list[int]:
        """Source positions where at least one segment has a pixel, in order."""
        return sorted(set().union(*(frames.keys() for frames in self._frames)))

    def make_exclusive(self) -> None:
        """Leave every pixel claimed by several segments in one (``seg_overlap.claim_order``:
        the segment with the fewest pixels), working on the packed frames of the positions
        that several segments share."""
        counts = [
            sum(int(np.bitwise_count(frame).sum()) for frame in frames.values())
            for frames in self._frames
        ]
        order = claim_order(counts)
        for position in self.filled_positions():
            claimed: np.ndarray | None = None
            for index in order:
                frame = self._frames[index].get(position)
                if frame is None:
                    continue
                if claimed is None:
                    claimed = frame.copy()
                    continue
                kept = frame & ~claimed
                claimed |= frame
                if kept.view(np.uint64).any():
                    self._frames[index][position] = kept
                else:
                    del self._frames[index][position]

    def overlap(self) -> bool:
        """Whether any pixel belongs to two segments."""
        for index, first in enumerate(self._frames):
            for second in self._frames[index + 1 :]:
                for position in first.keys() & second.keys():
                    if np.bitwise_and(first[position], second[position]).any():
                        return True
        return False


# the highdicom (0.28) hooks PrepackedSegmentation replaces; without them, highdicom's own path
_PIXEL_HOOKS = (
    "_check_and_cast_pixel_array",
    "_get_segment_pixel_array",
    "_encode_pixels_native",
    "_get_nonempty_plane_indices",
)
PACKED_PATH = all(callable(getattr(hd.seg.Segmentation, name, None)) for name in _PIXEL_HOOKS)
# what highdicom's ``_build_luts`` sets (besides the coordinate system its constructor sets)
_LUT_ATTRIBUTES = frozenset(
    {
        "_db_con",
        "_dim_ind_col_names",
        "_dim_ind_pointers",
        "_file_reader",
        "_is_tiled_full",
        "_missing_reference_instances",
    }
)


class PrepackedSegmentation(hd.seg.Segmentation):
    """highdicom's BINARY Segmentation over ``PackedSegments``.

    highdicom builds every attribute, the per-frame functional groups and the frame order as
    usual; only its pixel hooks are replaced when the pixels are ``PackedSegments``: the
    overlap check, the search for non-empty source positions (``omit_empty_frames``), the
    per-frame segment extraction and the bit-packing (the frames are already packed, so their
    bytes are written as they are). Any other pixel array goes through highdicom's own hooks.
    """

    @classmethod
    def _check_and_cast_pixel_array(  # type: ignore[override]
        cls,
        pixel_array: Any,
        segment_numbers: np.ndarray,
        segmentation_type: hd.seg.SegmentationTypeValues,
        dtype: type,
    ) -> tuple[Any, hd.seg.SegmentsOverlapValues]:
        if not isinstance(pixel_array, PackedSegments):
            return super()._check_and_cast_pixel_array(
                pixel_array, segment_numbers, segmentation_type, dtype
            )
        if segmentation_type != hd.seg.SegmentationTypeValues.BINARY:
            raise ValueError("packed segments are encoded as a BINARY segmentation only")
        if pixel_array.shape[-1] != len(segment_numbers):
            raise ValueError(
                f"{pixel_array.shape[-1]} packed segments for {len(segment_numbers)} "
                "segment descriptions"
            )
        overlap = pixel_array.overlap()
        return pixel_array, (
            hd.seg.SegmentsOverlapValues.YES if overlap else hd.seg.SegmentsOverlapValues.NO
        )

    @staticmethod
    def _get_nonempty_plane_indices(pixel_array: Any) -> tuple[list[int], bool]:
        if not isinstance(pixel_array, PackedSegments):
            return hd.seg.Segmentation._get_nonempty_plane_indices(pixel_array)
        filled = pixel_array.filled_positions()
        if not filled:  # highdicom's answer for an all-empty SEG: keep every frame
            return list(range(pixel_array.shape[0])), True
        return filled, False

    @staticmethod
    def _get_segment_pixel_array(  # type: ignore[override]
        pixel_array: Any, segment_number: int, **kwargs: Any
    ) -> np.ndarray:
        if isinstance(pixel_array, _PackedPlane):
            return pixel_array.segment(segment_number)
        return hd.seg.Segmentation._get_segment_pixel_array(
            pixel_array, segment_number=segment_number, **kwargs
        )

    def _encode_pixels_native(self, planes: np.ndarray) -> bytes:
        if isinstance(getattr(self, "_pixels_in", None), PackedSegments):
            return planes.tobytes()
        return super()._encode_pixels_native(planes)

    def __init__(self, *, pixel_array: Any, **kwargs: Any) -> None:
        # read by _encode_pixels_native while the constructor runs, then dropped (plain
        # object attributes: pydicom's Dataset.__setattr__ is for DICOM keywords)
        object.__setattr__(self, "_pixels_in", pixel_array)
        try:
            super().__init__(pixel_array=pixel_array, **kwargs)
        finally:
            object.__delattr__(self, "_pixels_in")

    def _build_luts(self) -> None:
        """Defer highdicom's query tables (an in-memory SQLite of every frame, 0.2 s for
        3,900 frames) to their first use: the node writes the SEG it builds and never reads
        it back, but a caller that queries it still gets them."""
        object.__setattr__(self, "_luts_pending", True)

    def _ensure_luts(self) -> None:
        if self.__dict__.get("_luts_pending"):
            object.__setattr__(self, "_luts_pending", False)
            super()._build_luts()

    def __getattr__(self, name: str) -> Any:
        if name in _LUT_ATTRIBUTES and self.__dict__.get("_luts_pending"):
            self._ensure_luts()
            return object.__getattribute__(self, name)
        return super().__getattr__(name)

    def __getstate__(self) -> dict[str, Any]:
        self._ensure_luts()  # highdicom's pickling (and so deepcopy) serialises the tables
        return super().__getstate__()
