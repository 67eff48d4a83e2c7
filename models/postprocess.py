"""Manifest-declared postprocessing: activation, labels, connected components, coded segments.

Label convention: with ``softmax`` the model's channel 0 is background and channel ``L``
is the segment whose manifest ``label`` is ``L``; with ``sigmoid`` (multi-label, no
background channel) channel ``L - 1`` is label ``L``; with ``none`` the model's output is
already a label map (one channel of integers).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from models.api import Segment
from models.manifest import Activation, ConnectedComponents, Outputs

__all__ = [
    "activate",
    "filter_components",
    "masks_from",
    "segments_from",
    "softmax",
]


def softmax(logits: np.ndarray, axis: int = 0) -> np.ndarray:
    shifted = logits - logits.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)


def activate(logits: np.ndarray, activation: Activation) -> np.ndarray:
    """Channels-first logits → probabilities (or the label map unchanged for ``none``)."""
    logits = logits.astype(np.float32, copy=False)
    if activation is Activation.SOFTMAX:
        return softmax(logits, axis=0)
    if activation is Activation.SIGMOID:
        return 1.0 / (1.0 + np.exp(-logits))
    return logits


def masks_from(
    probabilities: np.ndarray,
    activation: Activation,
    labels: list[int],
    *,
    threshold: float = 0.5,
    fractional: bool = False,
) -> dict[int, np.ndarray]:
    """Channels-first probabilities → one mask per label (bool, or float for fractional)."""
    channels = probabilities.shape[0]

    def channel_of(label: int) -> int:
        index = label if activation is Activation.SOFTMAX else label - 1
        if activation is Activation.NONE:
            index = 0
        if index >= channels:
            raise ValueError(
                f"label {label} needs output channel {index}, the model has {channels}"
            )
        return index

    if activation is Activation.NONE:
        label_map = np.rint(probabilities[0]).astype(np.int64)
        return {label: label_map == label for label in labels}
    if fractional:
        return {label: probabilities[channel_of(label)].astype(np.float32) for label in labels}
    if activation is Activation.SOFTMAX:
        winner = probabilities.argmax(axis=0)
        return {label: winner == channel_of(label) for label in labels}
    return {label: probabilities[channel_of(label)] >= threshold for label in labels}


def filter_components(mask: np.ndarray, spec: ConnectedComponents) -> np.ndarray:
    """Drop components smaller than ``min_voxels``; keep only the ``keep_largest`` biggest."""
    labelled, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labelled.ravel())[1:]
    keep = np.flatnonzero(sizes >= spec.min_voxels) + 1
    if spec.keep_largest is not None:
        keep = keep[np.argsort(sizes[keep - 1])[::-1][: spec.keep_largest]]
    return np.isin(labelled, keep)


def segments_from(
    masks: dict[int, np.ndarray],
    outputs: Outputs,
    connected_components: ConnectedComponents | None = None,
) -> tuple[Segment, ...]:
    """Masks by label → coded Segments in manifest order."""
    segments = []
    for spec in outputs.segments:
        mask = masks[spec.label]
        if connected_components is not None and mask.dtype == np.bool_:
            mask = filter_components(mask, connected_components)
        segments.append(
            Segment(
                key=spec.key,
                label=spec.name,
                category=spec.category.code,
                type=spec.type.code,
                mask=mask,
                anatomic_site=None if spec.anatomic_site is None else spec.anatomic_site.code,
                color_rgb=spec.color_rgb,
            )
        )
    return tuple(segments)
