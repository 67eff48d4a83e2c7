"""Chest radiograph phantoms (PA view) with known lungs, heart and cardiothoracic ratio.

``render_chest_xray`` draws the anatomy in millimetres around the image centre (lung fields
with rounded apices and costophrenic angles, a tilted cardiac silhouette whose width is set
from the requested cardiothoracic ratio, mediastinum and spine, hemidiaphragms, posterior and
anterior ribs, clavicles, vascular markings, a gastric bubble), then blurs, applies a random
gamma and adds quantum noise. It returns the display image (larger is brighter) with the
exact masks it drew, so the dx-chest plugin is measured against truth, not against itself.
``write_chest_xray`` stores one phantom as a DX ("For Presentation") or CR instance in
MONOCHROME1 or MONOCHROME2, with the headers a radiography system writes.

Conventions: image left is the patient's right (PA view), so the heart lies right of centre.
The lung mask is the visible lung field: it excludes the cardiac silhouette, the mediastinum
and everything below the diaphragm, as in the JSRT/SCR reference annotations. The CTR is the
widest horizontal extent of the heart over the widest horizontal extent of the lung fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation
from scipy import ndimage
from skimage.transform import resize

from models.phantoms.dicom_series import (
    Modality,
    SeriesIdentity,
    StudyIdentity,
    derived_uid,
    identity_dataset,
)

__all__ = [
    "ChestXray",
    "ChestXrayAnatomy",
    "ChestXrayTruth",
    "Photometric",
    "RadiographKind",
    "WrittenChestXray",
    "make_chest_xray",
    "measure_ctr",
    "render_chest_xray",
    "write_chest_xray",
]

CARDIOMEGALY_THRESHOLD = 0.5
MIN_CTR, MAX_CTR = 0.3, 0.7


class RadiographKind(StrEnum):
    """Which IOD the phantom is stored as: Digital X-Ray (For Presentation) or CR."""

    DX = "DX"
    CR = "CR"


class Photometric(StrEnum):
    MONOCHROME1 = "MONOCHROME1"  # larger stored value is darker
    MONOCHROME2 = "MONOCHROME2"  # larger stored value is brighter


@dataclass(frozen=True)
class ChestXrayAnatomy:
    """The patient: field of view, sampling and the cardiothoracic ratio to draw.

    Everything not given here (lung height, mediastinal width, rib positions, exposure,
    noise) is drawn from ``seed``, so one seed always gives the same image.
    """

    ctr: float = 0.45
    rows: int = 512
    columns: int = 512
    field_mm: tuple[float, float] = (430.0, 430.0)  # (height, width) of the detector area
    seed: int = 0
    scale: float | None = None  # patient size relative to an average adult; None: random
    tilt_deg: float | None = None  # in-plane rotation; None: random within ±4°
    noise: float | None = None  # quantum noise std in display units; None: random

    def __post_init__(self) -> None:
        if not MIN_CTR <= self.ctr <= MAX_CTR:
            raise ValueError(f"ctr must be within [{MIN_CTR}, {MAX_CTR}], got {self.ctr}")
        if self.rows < 64 or self.columns < 64:
            raise ValueError(f"a chest radiograph needs at least 64×64 pixels, got {self.shape}")
        if min(self.field_mm) < 300:
            raise ValueError(
                f"field_mm must be at least 300 mm each way to hold a chest, got {self.field_mm}"
            )

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.columns)

    @property
    def pixel_spacing(self) -> tuple[float, float]:
        """(between rows, between columns) in mm in the patient plane: what PixelSpacing says."""
        return (self.field_mm[0] / self.rows, self.field_mm[1] / self.columns)


@dataclass(frozen=True)
class ChestXrayTruth:
    """What was drawn: boolean (rows, columns) masks and the CTR measured on them."""

    lungs: np.ndarray
    heart: np.ndarray
    ctr: float
    heart_width_mm: float
    thoracic_width_mm: float

    @property
    def cardiomegaly(self) -> bool:
        return self.ctr > CARDIOMEGALY_THRESHOLD


@dataclass(frozen=True)
class ChestXray:
    """A rendered phantom: display image in [0, 1] (larger is brighter) and its truth."""

    image: np.ndarray
    truth: ChestXrayTruth
    anatomy: ChestXrayAnatomy


@dataclass(frozen=True)
class WrittenChestXray:
    path: Path
    kind: RadiographKind
    photometric: Photometric
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    phantom: ChestXray = field(repr=False)

    @property
    def truth(self) -> ChestXrayTruth:
        return self.phantom.truth


def measure_ctr(
    lungs: np.ndarray, heart: np.ndarray, column_spacing_mm: float = 1.0
) -> tuple[float, float, float]:
    """(ratio, heart width, thoracic width): widest horizontal extents, in mm."""
    lung_columns = np.flatnonzero(lungs.any(axis=0) | heart.any(axis=0))
    heart_columns = np.flatnonzero(heart.any(axis=0))
    if lung_columns.size == 0 or heart_columns.size == 0:
        raise ValueError("the CTR needs non-empty lung and heart masks")
    thoracic = (lung_columns[-1] - lung_columns[0] + 1) * column_spacing_mm
    heart_width = (heart_columns[-1] - heart_columns[0] + 1) * column_spacing_mm
    return heart_width / thoracic, heart_width, thoracic


# --- anatomy -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Shape:
    """The random anatomy of one patient, in mm around the image centre (x right, y down)."""

    cx: float
    apex_y: float
    base_y: float
    half_width_right: float  # patient's right = image left
    half_width_left: float
    mediastinum: float
    dome_right: float
    dome_left: float
    dome_height: float
    heart_shift: float
    heart_aspect: float
    heart_tilt: float
    knob_radius: float
    chest_wall: float
    rib_pitch: float
    rib_width: float


def _random_shape(rng: np.random.Generator, scale: float) -> _Shape:
    height = rng.uniform(225, 275) * scale
    apex_y = rng.uniform(-175, -140) * scale
    base_y = apex_y + height
    dome_right = base_y - rng.uniform(25, 45) * scale
    return _Shape(
        cx=rng.uniform(-12, 12),
        apex_y=apex_y,
        base_y=base_y,
        half_width_right=rng.uniform(125, 150) * scale,
        half_width_left=rng.uniform(120, 148) * scale,
        mediastinum=rng.uniform(22, 32) * scale,
        dome_right=dome_right,
        dome_left=dome_right + rng.uniform(5, 22) * scale,
        dome_height=rng.uniform(25, 45) * scale,
        heart_shift=rng.uniform(0.12, 0.24),
        heart_aspect=rng.uniform(0.72, 0.9),
        heart_tilt=np.deg2rad(rng.uniform(15, 35)),
        knob_radius=rng.uniform(14, 20) * scale,
        chest_wall=rng.uniform(22, 45) * scale,
        rib_pitch=rng.uniform(21, 26) * scale,
        rib_width=rng.uniform(8, 12) * scale,
    )


def _diaphragm(x: np.ndarray, s: _Shape) -> np.ndarray:
    """Row (mm) of the diaphragm under column x: one dome per side, lowest at the edges."""
    right = (
        s.dome_right
        + s.dome_height
        * ((x - (s.cx - 0.45 * s.half_width_right)) / (0.6 * s.half_width_right)) ** 2
    )
    left = (
        s.dome_left
        + s.dome_height * ((x - (s.cx + 0.45 * s.half_width_left)) / (0.6 * s.half_width_left)) ** 2
    )
    return np.where(x < s.cx, right, left)


def _floor(x: np.ndarray, s: _Shape, heart_width: float) -> np.ndarray:
    """The lower edge of the chest: the domes, and under the heart the flat line it rests on."""
    centre = s.cx + s.heart_shift * heart_width
    under_heart = _heart_level(s) + 60 * ((x - centre) / (0.55 * heart_width)) ** 4
    return np.minimum(_diaphragm(x, s), under_heart)


def _heart_level(s: _Shape) -> float:
    """Row (mm) of the line the heart rests on, just below the two domes."""
    return (s.dome_right + s.dome_left) / 2 + 0.2 * s.dome_height


def _lung_field(
    x: np.ndarray, y: np.ndarray, s: _Shape, side: int, floor: np.ndarray, cardiac_y: float
) -> np.ndarray:
    """One lung field before the heart is cut out: a boxy superellipse clipped below by the
    hemidiaphragm and medially by the mediastinum down to ``cardiac_y``; lower down it
    reaches the heart, whose borders are lung against heart as on a real film.
    side -1 is image left (patient right)."""
    half = s.half_width_right if side < 0 else s.half_width_left
    lateral = s.cx + side * half
    a = (half - s.mediastinum) * 0.62
    centre_x = lateral - side * a
    widest_y = s.base_y - 0.28 * (s.base_y - s.apex_y)
    b_up = widest_y - s.apex_y
    b_down = (s.base_y - widest_y) * 1.6
    b = np.where(y < widest_y, b_up, b_down)
    inside = np.abs((x - centre_x) / a) ** 2.4 + np.abs((y - widest_y) / b) ** 2.2 <= 1.0
    mediastinum = s.mediastinum + 0.06 * np.clip(y - s.apex_y, 0, None)
    medial = side * (x - s.cx) >= np.where(y < cardiac_y, mediastinum, 6.0)
    return inside & medial & (y <= floor)


def _heart_ellipse(s: _Shape, width: float) -> tuple[float, float, float, float]:
    """(centre x, centre y, semi-axis a, semi-axis b) of the heart ``width`` mm wide."""
    # horizontal half-extent of a rotated ellipse: sqrt(a²cos²t + b²sin²t) = width / 2
    tilt = s.heart_tilt
    a = width / 2 / np.sqrt(np.cos(tilt) ** 2 + (s.heart_aspect * np.sin(tilt)) ** 2)
    b = a * s.heart_aspect
    return s.cx + s.heart_shift * width, _heart_level(s) - 0.3 * b, a, b


def _heart(x: np.ndarray, y: np.ndarray, s: _Shape, width: float) -> np.ndarray:
    """The cardiac silhouette: a tilted ellipse resting on the floor, ``width`` mm wide."""
    centre_x, centre_y, a, b = _heart_ellipse(s, width)
    dx, dy = x - centre_x, y - centre_y
    u = dx * np.cos(s.heart_tilt) + dy * np.sin(s.heart_tilt)
    v = -dx * np.sin(s.heart_tilt) + dy * np.cos(s.heart_tilt)
    floor = np.minimum(_diaphragm(x, s), _heart_level(s))
    return ((u / a) ** 2 + (v / b) ** 2 <= 1.0) & (y <= floor)


def _ribs(x: np.ndarray, y: np.ndarray, s: _Shape, rng: np.random.Generator) -> np.ndarray:
    """Posterior ribs (rising from the spine, then curving down laterally) and fainter
    anterior ribs (running down towards the sternum); cortical edges brighter than marrow."""
    image = np.zeros_like(x)
    for side in (-1, 1):
        half = s.half_width_right if side < 0 else s.half_width_left
        lateral = side * (x - s.cx)
        reach = (lateral > 8) & (lateral < half + s.chest_wall * 0.6)
        for k in range(10):
            y0 = s.apex_y - 8 + k * s.rib_pitch + rng.normal(0, 1.5)
            centre = y0 - 0.22 * lateral + 0.0042 * lateral**2 * (150 / half)
            d = np.abs(y - centre) / (s.rib_width / 2)
            band = np.clip(1 - d**2, 0, None) * 0.5 + np.exp(-((d - 0.9) ** 2) / 0.02) * 0.5
            image += np.where(reach, band, 0) * rng.uniform(0.07, 0.1)
        for k in range(6):
            y0 = s.apex_y + 20 + k * s.rib_pitch * 1.25
            centre = y0 + 0.45 * np.clip(half - lateral, 0, None) - 0.001 * (half - lateral) ** 2
            d = np.abs(y - centre) / (s.rib_width * 0.8)
            band = np.exp(-(d**2) * 2)
            image += np.where(reach & (lateral > 30), band, 0) * 0.035
        # clavicle
        centre = s.apex_y + 15 - 0.22 * (lateral - 20)
        d = np.abs(y - centre) / 7.5
        image += np.where((lateral > 15) & (lateral < half * 1.05), np.exp(-(d**4)), 0) * 0.12
    return image


def _smooth_noise(shape: tuple[int, int], sigma_px: float, rng: np.random.Generator) -> np.ndarray:
    field_ = ndimage.gaussian_filter(rng.standard_normal(shape), sigma_px, mode="reflect")
    return field_ / (field_.std() + 1e-9)


_DRAWING_SPACING_MM = 0.8  # the smooth image is drawn no finer than this, then interpolated


def _grid(
    shape: tuple[int, int], field_mm: tuple[float, float], tilt: float
) -> tuple[np.ndarray, np.ndarray]:
    """Patient coordinates (mm, x right, y down, rotated by ``tilt``) of the pixel centres."""
    rows, cols = shape
    yy = (np.arange(rows) - (rows - 1) / 2) * (field_mm[0] / rows)
    xx = (np.arange(cols) - (cols - 1) / 2) * (field_mm[1] / cols)
    gx, gy = np.meshgrid(xx.astype(np.float32), yy.astype(np.float32))
    return gx * np.cos(tilt) + gy * np.sin(tilt), -gx * np.sin(tilt) + gy * np.cos(tilt)


def _anatomy_masks(
    x: np.ndarray, y: np.ndarray, s: _Shape, heart_width: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(lung fields before the heart is cut out, heart, aortic knob, floor) on one grid."""
    floor = _floor(x, s, heart_width)
    _, centre_y, _, b = _heart_ellipse(s, heart_width)
    cardiac_y = centre_y - 0.5 * b
    lung_fields = _lung_field(x, y, s, -1, floor, cardiac_y) | _lung_field(
        x, y, s, 1, floor, cardiac_y
    )
    heart = _heart(x, y, s, heart_width)
    knob = (x - (s.cx + s.mediastinum + 0.4 * s.knob_radius)) ** 2 + (
        y - (s.apex_y + 0.3 * (s.base_y - s.apex_y))
    ) ** 2 <= s.knob_radius**2
    return lung_fields, heart, knob, floor


def _two_largest(mask: np.ndarray) -> np.ndarray:
    """The two lung fields, without the slivers left where the heart meets the floor."""
    labelled, count = ndimage.label(mask)
    if count <= 2:
        return mask
    sizes = np.bincount(labelled.ravel())[1:]
    return np.isin(labelled, np.argsort(sizes)[-2:] + 1)


def render_chest_xray(anatomy: ChestXrayAnatomy) -> ChestXray:
    """Draw one PA chest radiograph with its masks; see the module docstring.

    The smooth image is drawn on a grid no finer than 0.8 mm and interpolated (a detector's
    blur is wider than that); masks and quantum noise are made at full resolution, so a
    2048² phantom costs little more than a 512² one.
    """
    rng = np.random.default_rng(anatomy.seed)
    scale = anatomy.scale if anatomy.scale is not None else rng.uniform(0.86, 1.06)
    s = _random_shape(rng, scale)
    tilt = np.deg2rad(anatomy.tilt_deg if anatomy.tilt_deg is not None else rng.uniform(-4, 4))
    coarse_shape = (
        min(anatomy.rows, int(np.ceil(anatomy.field_mm[0] / _DRAWING_SPACING_MM))),
        min(anatomy.columns, int(np.ceil(anatomy.field_mm[1] / _DRAWING_SPACING_MM))),
    )
    coarse_spacing = (
        anatomy.field_mm[0] / coarse_shape[0],
        anatomy.field_mm[1] / coarse_shape[1],
    )
    cx, cy = _grid(coarse_shape, anatomy.field_mm, tilt)
    # the heart's width is set in mm from a first estimate of the thoracic width, then
    # corrected for rasterisation, tilt and the floor it rests on
    width = anatomy.ctr * (s.half_width_right + s.half_width_left)
    for _ in range(3):
        lung_fields, heart, _, _ = _anatomy_masks(cx, cy, s, width)
        width *= anatomy.ctr / measure_ctr(lung_fields, heart, coarse_spacing[1])[0]
    lung_fields, heart, knob, floor = _anatomy_masks(cx, cy, s, width)
    lungs = _two_largest(lung_fields & ~heart & ~knob)
    image = _draw(cx, cy, s, rng, lungs, heart, knob, floor, coarse_spacing)
    if coarse_shape != anatomy.shape:
        image = resize(image, anatomy.shape, order=1, preserve_range=True).astype(np.float32)
        x, y = _grid(anatomy.shape, anatomy.field_mm, tilt)
        lung_fields, heart, knob, _ = _anatomy_masks(x, y, s, width)
        lungs = _two_largest(lung_fields & ~heart & ~knob)
    noise = anatomy.noise if anatomy.noise is not None else rng.uniform(0.005, 0.03)
    image = np.clip(image + rng.normal(0, noise, image.shape).astype(np.float32), 0, 1)
    ctr, heart_mm, thoracic_mm = measure_ctr(lungs, heart, anatomy.pixel_spacing[1])
    truth = ChestXrayTruth(
        lungs=lungs,
        heart=heart,
        ctr=float(ctr),
        heart_width_mm=float(heart_mm),
        thoracic_width_mm=float(thoracic_mm),
    )
    return ChestXray(image=image.astype(np.float32), truth=truth, anatomy=anatomy)


def _draw(
    x: np.ndarray,
    y: np.ndarray,
    s: _Shape,
    rng: np.random.Generator,
    lungs: np.ndarray,
    heart: np.ndarray,
    knob: np.ndarray,
    floor: np.ndarray,
    spacing: tuple[float, float],
) -> np.ndarray:
    px = float(np.mean(spacing))
    shape = lungs.shape

    def soft(mask: np.ndarray, mm: float) -> np.ndarray:
        return ndimage.gaussian_filter(mask.astype(np.float32), mm / px)

    outer = max(s.half_width_right, s.half_width_left) + s.chest_wall
    body = (np.abs((x - s.cx) / outer) ** 4 + np.abs((y - (s.apex_y + 120)) / 420) ** 6) <= 1
    shoulders = (np.abs((x - s.cx) / (outer + 40)) ** 2 + ((y - s.apex_y + 10) / 70) ** 2 <= 1) & (
        y < s.apex_y + 30
    )
    body = body | shoulders
    soft_tissue = rng.uniform(0.5, 0.62)
    image = np.zeros(shape, np.float32) + rng.uniform(0.0, 0.06)
    image += soft(body, 8) * soft_tissue
    # thicker soft tissue laterally (chest wall seen tangentially) and below the diaphragm
    lateral = np.clip(np.abs(x - s.cx) / outer, 0, 1)
    image += soft(body, 8) * 0.08 * lateral**3
    below = soft(y > floor, 6) * soft(body, 8)
    image += below * rng.uniform(0.12, 0.2)
    # mediastinum and spine: a bright central column with vertebral bodies
    spine = np.exp(-(((x - s.cx) / (s.mediastinum * 0.9)) ** 6))
    vertebrae = 0.5 + 0.5 * np.cos(2 * np.pi * (y - s.apex_y) / (s.rib_pitch * 1.05)) ** 8
    image += spine * (0.12 + 0.05 * vertebrae) * soft(body, 8)
    # lung fields: dark, less so near the edges and the hila, with vascular markings
    lung_soft = soft(lungs, 3.5)
    depth = ndimage.distance_transform_edt(lungs) * px
    aeration = 1 - np.exp(-depth / rng.uniform(12, 22))
    darkness = rng.uniform(0.3, 0.42)
    hila = np.zeros(shape, np.float32)
    for side in (-1, 1):
        hx = s.cx + side * (s.mediastinum + 30)
        hy = s.apex_y + 0.45 * (s.base_y - s.apex_y)
        hila += np.exp(-(((x - hx) / 30) ** 2 + ((y - hy) / 45) ** 2))
    markings = (
        _smooth_noise(shape, 2.5 / px, rng) * 0.025 + _smooth_noise(shape, 8 / px, rng) * 0.02
    )
    image -= lung_soft * darkness * (0.55 + 0.45 * aeration)
    image += lung_soft * (hila * 0.12 + markings * (0.6 + hila))
    # heart and aortic knob: full soft-tissue density, a little denser than the mediastinum
    image += soft(heart, 1.5) * rng.uniform(0.05, 0.1) + soft(knob, 2) * 0.06
    # gastric bubble under the left hemidiaphragm
    if rng.random() < 0.7:
        gx = s.cx + 0.5 * s.half_width_left
        gy = s.dome_left + s.dome_height * 0.4 + 28
        bubble = ((x - gx) / 32) ** 2 + ((y - gy) / 20) ** 2 <= 1
        image -= soft(bubble & (y > floor + 8), 3) * rng.uniform(0.1, 0.2)
    image += _ribs(x, y, s, rng) * soft(body, 6)
    # detector: blur, heel effect, gamma (quantum noise is added at full resolution)
    image = ndimage.gaussian_filter(image, rng.uniform(0.4, 0.9) / px)
    image *= 1 + rng.uniform(-0.06, 0.06) * (y / 200)
    return np.clip(image, 0, 1) ** rng.uniform(0.75, 1.3)


# --- DICOM -------------------------------------------------------------------------------


def write_chest_xray(
    path: Path,
    phantom: ChestXray,
    kind: RadiographKind,
    photometric: Photometric,
    study: StudyIdentity,
    series: SeriesIdentity,
    bits_stored: int = 12,
) -> str:
    """Store ``phantom`` as one DX For Presentation or CR Image instance; returns its UID.

    DX carries ImagerPixelSpacing (DX Detector module) and PixelSpacing with its
    calibration type; CR carries both as the CR Image module allows. MONOCHROME1 stores the
    inverted values and says so in PresentationLUTShape (INVERSE), as DX requires.
    """
    if series.modality.value != kind.value:
        raise ValueError(f"the series identity is {series.modality}, the phantom is {kind}")
    if not 8 <= bits_stored <= 16:
        raise ValueError(f"bits_stored must be 8..16, got {bits_stored}")
    top = (1 << bits_stored) - 1
    display = np.rint(phantom.image.astype(np.float64) * top).astype(np.uint16)
    stored = display if photometric is Photometric.MONOCHROME2 else (top - display)
    sop_class = (
        DigitalXRayImageStorageForPresentation
        if kind is RadiographKind.DX
        else ComputedRadiographyImageStorage
    )
    sop_instance = derived_uid(series.uid_seed or series.series_instance_uid, "instance", 0)
    ds = identity_dataset(study, series, sop_class, sop_instance, 1)
    # a projection image has no patient frame of reference (CR has no such module, DX makes
    # it optional and radiography systems leave it out), so SEGs over it use the 2D geometry
    del ds.FrameOfReferenceUID, ds.PositionReferenceIndicator
    spacing = [round(v, 6) for v in phantom.anatomy.pixel_spacing]
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric.value
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 0
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]  # rows run to the patient's left, columns to the feet
    ds.ImageLaterality = "U"
    ds.KVP = 120
    ds.ExposureTime = 8
    ds.XRayTubeCurrent = 320
    ds.Exposure = 3
    ds.PixelSpacing = spacing
    ds.LossyImageCompression = "00"
    ds.BurnedInAnnotation = "NO"
    ds.WindowCenter = top // 2 if photometric is Photometric.MONOCHROME2 else top - top // 2
    ds.WindowWidth = top
    if kind is RadiographKind.DX:
        _dx_modules(ds, photometric, spacing)
    else:
        _cr_modules(ds, spacing)
    ds.PixelData = stored.astype("<u2").tobytes()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return sop_instance


_SOURCE_TO_DETECTOR_MM = 1800.0
_SOURCE_TO_PATIENT_MM = 1650.0


def _dx_modules(ds: Dataset, photometric: Photometric, spacing: list[float]) -> None:
    """DX Series, Anatomy Imaged, Image, Detector, Positioning and Acquisition Context.

    The phantom is drawn in the patient plane, so PixelSpacing is the drawn spacing
    (calibrated by geometry) and ImagerPixelSpacing is larger by the magnification.
    """
    magnification = _SOURCE_TO_DETECTOR_MM / _SOURCE_TO_PATIENT_MM
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
    ds.AnatomicRegionSequence = [_code_item("51185008", "SCT", "Thorax")]
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1 if photometric is Photometric.MONOCHROME2 else -1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    ds.PresentationLUTShape = "IDENTITY" if photometric is Photometric.MONOCHROME2 else "INVERSE"
    ds.CalibrationImage = "NO"
    ds.DetectorType = "SCINTILLATOR"
    ds.DetectorConfiguration = "AREA"
    ds.DetectorID = "PHANTOM-DET"
    ds.ImagerPixelSpacing = [round(v * magnification, 6) for v in spacing]
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.PixelSpacingCalibrationDescription = "Phantom drawn in the patient plane"
    ds.PositionerType = "COLUMN"
    ds.FieldOfViewShape = "RECTANGLE"
    ds.FieldOfViewDimensions = [
        round(ds.Rows * float(ds.ImagerPixelSpacing[0])),
        round(ds.Columns * float(ds.ImagerPixelSpacing[1])),
    ]
    ds.DistanceSourceToDetector = _SOURCE_TO_DETECTOR_MM
    ds.DistanceSourceToPatient = _SOURCE_TO_PATIENT_MM
    ds.EstimatedRadiographicMagnificationFactor = round(magnification, 6)
    ds.Grid = "NONE"
    ds.ExposureIndex = 400
    ds.TargetExposureIndex = 400
    ds.DeviationIndex = 0.1
    view = _code_item("272479007", "SCT", "postero-anterior")
    view.ViewModifierCodeSequence = []
    ds.ViewCodeSequence = [view]
    ds.AcquisitionContextSequence = []


def _cr_modules(ds: Dataset, spacing: list[float]) -> None:
    """CR Series and CR Image; no magnification correction, as most CR readers write."""
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.ImagerPixelSpacing = spacing
    ds.DistanceSourceToDetector = _SOURCE_TO_DETECTOR_MM
    ds.PlateID = "PHANTOM-IP-1"
    ds.PlateType = "ST-VI"
    ds.PhosphorType = "BaFBr"
    ds.Sensitivity = 200


def _code_item(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def make_chest_xray(
    directory: Path,
    *,
    kind: RadiographKind = RadiographKind.DX,
    photometric: Photometric = Photometric.MONOCHROME2,
    anatomy: ChestXrayAnatomy | None = None,
    uid_seed: str | None = None,
) -> WrittenChestXray:
    """Render a phantom and write it as ``directory/<kind>0001.dcm`` in its own study."""
    anatomy = anatomy or ChestXrayAnatomy()
    seed = uid_seed or f"chest-xray/{anatomy.seed}/{kind.value}/{photometric.value}"
    study = StudyIdentity.from_seed(
        seed,
        patient_id=f"PHANTOM-CXR-{anatomy.seed:04d}",
        patient_name="Phantom^Chest",
        accession_number=f"CXR{anatomy.seed:06d}"[:16],
        study_description="XR CHEST PA",
    )
    series = SeriesIdentity.from_seed(
        seed,
        Modality(kind.value),
        series_description="CHEST PA",
        body_part_examined="CHEST",
        protocol_name="Chest PA",
        image_type=("ORIGINAL", "PRIMARY"),
    )
    phantom = render_chest_xray(anatomy)
    path = Path(directory) / f"{kind.value}0001.dcm"
    sop = write_chest_xray(path, phantom, kind, photometric, study, series)
    return WrittenChestXray(
        path=path,
        kind=kind,
        photometric=photometric,
        study_instance_uid=study.study_instance_uid,
        series_instance_uid=series.series_instance_uid,
        sop_instance_uid=sop,
        phantom=phantom,
    )
