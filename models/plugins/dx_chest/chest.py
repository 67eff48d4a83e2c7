"""dx-chest's image logic, without a framework: preprocessing, masks, CTR and its confidence.

Shared by ``train.py`` (which must feed the network exactly what the plugin will) and
``plugin.py``. Every function takes and returns numpy arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.transform import resize

__all__ = [
    "BACKGROUND",
    "CARDIOMEGALY_THRESHOLD",
    "CTR_SIGMA",
    "HEART",
    "LUNGS",
    "MODEL_SIZE",
    "PLAUSIBLE_CTR",
    "PLAUSIBLE_HEART_WIDTH_MM",
    "PLAUSIBLE_THORACIC_WIDTH_MM",
    "ChestMasks",
    "CtrMeasurement",
    "cardiomegaly_probability",
    "masks_from_logits",
    "measure_ctr",
    "preprocess",
    "soft_targets",
]

MODEL_SIZE = (96, 96)
BACKGROUND, LUNGS, HEART = 0, 1, 2
CARDIOMEGALY_THRESHOLD = 0.5
# a ratio outside this range is a failed segmentation, not a heart: report no measurement
PLAUSIBLE_CTR = (0.25, 0.8)
# Lengths an adult PA chest can have (mm); outside them the spacing or the segmentation is
# wrong, and the length is "not assessed". Textbook adult figures: transverse cardiac
# diameter about 10-16 cm, past 20 cm only in gross cardiomegaly or pericardial effusion;
# internal thoracic diameter about 24-36 cm. Widened for large patients and for the up to
# 1.25x magnification an uncorrected ImagerPixelSpacing carries (AP bedside at 100 cm).
# Children are out of scope: a small chest is "not assessed", never a wrong size.
PLAUSIBLE_HEART_WIDTH_MM = (60.0, 300.0)
PLAUSIBLE_THORACIC_WIDTH_MM = (180.0, 480.0)
# The RMS CTR error on held-out phantoms is about 0.007 (see metrics.json); the
# confidence uses a wider 0.015 so that it stays honest on images unlike the phantoms.
CTR_SIGMA = 0.015
_PERCENTILES = (0.5, 99.5)


def preprocess(frame: np.ndarray) -> np.ndarray:
    """One frame (larger is brighter, any range) to the network input (1, 1, 96, 96).

    Percentile scaling makes the input independent of bit depth, rescale and photometric
    inversion; anti-aliased resizing to a fixed square keeps whole-chest context.
    """
    if frame.ndim != 2:
        raise ValueError(f"preprocess takes one (rows, columns) frame, got {frame.shape}")
    step = max(1, int(math.sqrt(frame.size / 250_000)))
    low, high = np.percentile(frame[::step, ::step], _PERCENTILES)
    scaled = np.clip((frame.astype(np.float32) - low) / max(float(high - low), 1e-6), 0, 1)
    small = resize(scaled, MODEL_SIZE, order=1, anti_aliasing=True, preserve_range=True)
    return small.astype(np.float32)[None, None]


def soft_targets(lungs: np.ndarray, heart: np.ndarray) -> np.ndarray:
    """Training targets (3, 96, 96): each class's area fraction in every model pixel, so
    the network learns where a boundary falls inside a pixel, not just which side wins."""
    fractions = [
        resize(mask.astype(np.float32), MODEL_SIZE, order=1, anti_aliasing=True)
        for mask in (lungs, heart)
    ]
    lung, cardiac = (np.clip(f, 0, 1) for f in fractions)
    background = np.clip(1 - lung - cardiac, 0, 1)
    stacked = np.stack([background, lung, cardiac]).astype(np.float32)
    return stacked / stacked.sum(axis=0, keepdims=True)


@dataclass(frozen=True)
class ChestMasks:
    """Masks at the input's resolution, cleaned to plausible anatomy."""

    lungs: np.ndarray
    heart: np.ndarray
    lung_components: int

    @property
    def measurable(self) -> bool:
        """A frontal chest as the CTR assumes it: two lungs side by side, the heart between
        them and low in the chest, and a ratio a chest can have."""
        if self.lung_components != 2 or not self.heart.any():
            return False
        labelled, _ = ndimage.label(self.lungs)
        lung_centres = sorted(
            ndimage.center_of_mass(self.lungs, labelled, [1, 2]), key=lambda centre: centre[1]
        )
        heart_row, heart_column = ndimage.center_of_mass(self.heart)
        if not lung_centres[0][1] < heart_column < lung_centres[1][1]:
            return False
        if heart_row < max(centre[0] for centre in lung_centres):
            return False
        ratio = measure_ctr(self.lungs, self.heart, 1.0).ratio
        return PLAUSIBLE_CTR[0] <= ratio <= PLAUSIBLE_CTR[1]


def masks_from_logits(logits: np.ndarray, shape: tuple[int, int]) -> ChestMasks:
    """Network logits (3, h, w) to masks of ``shape``: class probabilities are interpolated
    to full resolution before the argmax (sub-pixel boundaries), then the heart keeps its
    largest component and the lungs their two largest, each with holes filled."""
    shifted = logits - logits.max(axis=0, keepdims=True)
    probabilities = np.exp(shifted)
    probabilities /= probabilities.sum(axis=0, keepdims=True)
    full = np.stack(
        [resize(p, shape, order=1, preserve_range=True) for p in probabilities.astype(np.float32)]
    )
    labels = full.argmax(axis=0)
    heart = _largest(labels == HEART, 1)
    lungs = _largest(labels == LUNGS, 2, minimum_fraction=0.15)
    lungs &= ~heart
    count = int(ndimage.label(lungs)[1])
    return ChestMasks(lungs=lungs, heart=heart, lung_components=min(count, 2))


def _largest(mask: np.ndarray, keep: int, minimum_fraction: float = 0.0) -> np.ndarray:
    labelled, count = ndimage.label(mask)
    if count == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = np.bincount(labelled.ravel())[1:]
    order = np.argsort(sizes)[::-1][:keep]
    kept = [i + 1 for i in order if sizes[i] >= minimum_fraction * sizes[order[0]]]
    return ndimage.binary_fill_holes(np.isin(labelled, kept))


@dataclass(frozen=True)
class CtrMeasurement:
    """Cardiothoracic ratio: widest heart extent over widest lung-field extent (PA view)."""

    ratio: float
    heart_width_mm: float
    thoracic_width_mm: float


def measure_ctr(lungs: np.ndarray, heart: np.ndarray, column_spacing_mm: float) -> CtrMeasurement:
    heart_columns = np.flatnonzero(heart.any(axis=0))
    thorax_columns = np.flatnonzero(lungs.any(axis=0) | heart.any(axis=0))
    if heart_columns.size == 0 or thorax_columns.size == 0:
        raise ValueError("measuring a CTR needs a heart and lung fields")
    heart_width = float(heart_columns[-1] - heart_columns[0] + 1) * column_spacing_mm
    thoracic = float(thorax_columns[-1] - thorax_columns[0] + 1) * column_spacing_mm
    return CtrMeasurement(heart_width / thoracic, heart_width, thoracic)


def cardiomegaly_probability(ratio: float, sigma: float = CTR_SIGMA) -> float:
    """P(true CTR > 0.5) given the measured ratio and a Gaussian measurement error."""
    return 0.5 * (1 + math.erf((ratio - CARDIOMEGALY_THRESHOLD) / (sigma * math.sqrt(2))))
