"""Which segment keeps a voxel that several segments claim (``overlapping_segments: exclusive``).

Segments nest where anatomy nests (a nodule lies inside its lung), but viewers draw
overlapping SEG segments unreliably: OHIF 3.13 splits them over several labelmaps and shows
some of the inner segments only. The rule, generic over plugins: a voxel claimed by several
segments stays in the most specific one, the segment with the fewest voxels; equal sizes go
to the earlier segment in Findings order. So a nodule keeps all its voxels and its lung loses
them. Only the SEG's masks change; measurements and reports stay the plugin's own.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def claim_order(voxel_counts: Sequence[int]) -> list[int]:
    """Segment indices in the order they claim voxels: fewest voxels first, ties by index."""
    return sorted(range(len(voxel_counts)), key=lambda index: (voxel_counts[index], index))


def exclusive_masks(masks: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Boolean masks with every shared voxel left in the segment ``claim_order`` puts first.

    For masks highdicom encodes itself (label maps, frames that do not pack to whole
    bytes); bit-packed masks use ``PackedSegments.make_exclusive``, the same rule."""
    result: list[np.ndarray] = list(masks)
    claimed: np.ndarray | None = None
    for index in claim_order([int(np.count_nonzero(mask)) for mask in masks]):
        mask = masks[index]
        if claimed is None:
            claimed = mask.copy()
            continue
        result[index] = mask & ~claimed
        claimed |= mask
    return result
