"""Pixel spacing from a header: which tag gives it, and the radiographic magnification.

The loader (on a pydicom Dataset) and ``routes explain`` (on the index's attribute JSON) must
reach the same verdict, so both read through here. Nothing is assumed: a spacing that is
absent, zero, negative or not two finite numbers is no spacing, and the series then has
``SpacingSource.NONE`` (a plugin that needs spacing is refused; see ``InputSpec.needs_spacing``).

Order, first usable wins:

1. ``PixelSpacing`` (from the functional groups of an enhanced object, else the top level):
   what the modality calls the spacing in the patient (for CR/DX a calibrated value).
2. ``ImagerPixelSpacing`` (projection radiography: the spacing at the detector) divided by the
   magnification: ``EstimatedRadiographicMagnificationFactor`` when usable, else
   ``DistanceSourceToDetector / DistanceSourceToPatient``. With neither, it is used as it is
   (magnification None): lengths are then those at the detector, a few per cent to about 25 %
   larger than in the patient (PA chest at 180 cm about 1.1; AP bedside at 100 cm up to 1.25),
   as a PACS ruler on the same image shows them; the outputs say the value is uncorrected.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydicom.multival import MultiValue

from models.api import SpacingSource

if TYPE_CHECKING:
    from models.api import PluginInput

__all__ = [
    "MAX_MAGNIFICATION",
    "ResolvedSpacing",
    "spacing_in_words",
    "spacing_of_attributes",
    "spacing_of_dataset",
]

# PS3.3 sets no bound. Magnification views go to about 2 (mammography 1.5-1.8); a factor
# below 1 (the patient behind the detector) or above this is a header error, not geometry.
MAX_MAGNIFICATION = 3.0


@dataclass(frozen=True)
class ResolvedSpacing:
    """The spacing a header gives (row, column in mm), where it came from, and in words."""

    spacing: tuple[float, float] | None
    source: SpacingSource
    magnification: float | None = None
    detail: str = ""  # how it was found, or why there is none: for refusals, logs, reports

    def __post_init__(self) -> None:
        if (self.spacing is None) != (self.source is SpacingSource.NONE):
            raise ValueError(f"spacing {self.spacing} does not fit source {self.source.value}")


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value)


def _numbers(value: Any) -> tuple[float, ...] | None:
    """The value as finite floats (DICOM multi-values, JSON lists or ``a\\b`` text)."""
    if isinstance(value, str):
        value = value.split("\\")
    elif not isinstance(value, (list, tuple, MultiValue)):
        value = [value]
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return numbers if numbers and all(math.isfinite(n) for n in numbers) else None


def _pair(keyword: str, value: Any) -> tuple[tuple[float, float] | None, str]:
    """A usable (row, column) spacing, else None and why not."""
    if value is None or value == "" or (isinstance(value, (list, tuple)) and not value):
        return None, f"no {keyword}"
    numbers = _numbers(value)
    if numbers is None or len(numbers) != 2:
        return None, f"{keyword} {_shown(value)!r} is not two numbers"
    if not all(n > 0 for n in numbers):
        return None, f"{keyword} {_shown(value)} is not positive"
    return (numbers[0], numbers[1]), ""


def _magnification(get: Callable[[str], Any]) -> tuple[float | None, str]:
    """The factor ImagerPixelSpacing is divided by, and where it came from (or why none)."""
    notes = []
    factor = get("EstimatedRadiographicMagnificationFactor")
    if factor is not None and factor != "":
        numbers = _numbers(factor)
        if numbers is not None and len(numbers) == 1 and 1.0 <= numbers[0] <= MAX_MAGNIFICATION:
            return numbers[0], "EstimatedRadiographicMagnificationFactor"
        notes.append(
            f"EstimatedRadiographicMagnificationFactor {_shown(factor)} is not within "
            f"1-{MAX_MAGNIFICATION:g}"
        )
    detector = _numbers(get("DistanceSourceToDetector"))
    patient = _numbers(get("DistanceSourceToPatient"))
    if detector is not None and patient is not None and len(detector) == len(patient) == 1:
        if patient[0] > 0 and 1.0 <= detector[0] / patient[0] <= MAX_MAGNIFICATION:
            return (
                detector[0] / patient[0],
                f"DistanceSourceToDetector {detector[0]:g} / DistanceSourceToPatient "
                f"{patient[0]:g} mm",
            )
        notes.append(f"the source distances give no magnification within 1-{MAX_MAGNIFICATION:g}")
    elif not notes:
        notes.append("no EstimatedRadiographicMagnificationFactor or source-to-patient distance")
    return None, "; ".join(notes)


def _resolve(get: Callable[[str], Any], first: Any = None) -> ResolvedSpacing:
    """``first``: a PixelSpacing that takes precedence (an enhanced object's functional group)."""
    reasons = []
    for candidate in (first, get("PixelSpacing")):
        if candidate is None:
            continue
        spacing, why = _pair("PixelSpacing", candidate)
        if spacing is not None:
            return ResolvedSpacing(
                spacing, SpacingSource.PIXEL_SPACING, None, f"PixelSpacing {_mm(spacing)}"
            )
        reasons.append(why)
    if not reasons:
        reasons.append("no PixelSpacing")
    imager, why = _pair("ImagerPixelSpacing", get("ImagerPixelSpacing"))
    if imager is None:
        detail = f"no calibrated pixel spacing ({'; '.join([*reasons, why])})"
        return ResolvedSpacing(None, SpacingSource.NONE, None, detail)
    factor, origin = _magnification(get)
    if factor is None:
        detail = (
            f"ImagerPixelSpacing {_mm(imager)} at the detector, not corrected for "
            f"magnification ({origin})"
        )
        return ResolvedSpacing(imager, SpacingSource.IMAGER_PIXEL_SPACING, None, detail)
    spacing = (imager[0] / factor, imager[1] / factor)
    detail = (
        f"ImagerPixelSpacing {_mm(imager)} corrected by magnification {factor:.3f} "
        f"({origin}): {_mm(spacing)}"
    )
    return ResolvedSpacing(spacing, SpacingSource.IMAGER_PIXEL_SPACING, factor, detail)


def _mm(spacing: tuple[float, float]) -> str:
    return f"{spacing[0]:.4g} × {spacing[1]:.4g} mm"


def spacing_of_dataset(ds: Any) -> ResolvedSpacing:
    """The spacing of a pydicom Dataset (of its first frame, for an enhanced object)."""
    measures = None
    for sequence in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        groups = ds.get(sequence)
        if groups and "PixelMeasuresSequence" in groups[0] and groups[0].PixelMeasuresSequence:
            measures = groups[0].PixelMeasuresSequence[0].get("PixelSpacing")
            if measures is not None:
                break
    return _resolve(ds.get, measures)


def spacing_of_attributes(attributes: Mapping[str, Any]) -> ResolvedSpacing | None:
    """The spacing from indexed top-level attributes; None when they cannot tell.

    The index keeps no sequences, so an enhanced (multi-frame) object whose spacing may sit in
    its functional groups is only known to have one when the top level says so.
    """
    resolved = _resolve(attributes.get)
    if resolved.source is SpacingSource.NONE and "NumberOfFrames" in attributes:
        return None
    return resolved


def spacing_in_words(series: PluginInput) -> str:
    """What a length on ``series`` rests on, for report text (the header's detail when known)."""
    if series.headers:
        return spacing_of_dataset(series.headers[0]).detail
    if series.spacing_source is SpacingSource.NONE:
        return "no calibrated pixel spacing"
    if series.spacing_source is SpacingSource.PIXEL_SPACING:
        return f"PixelSpacing {_mm(series.pixel_spacing)}"
    if series.magnification is None:
        return (
            f"ImagerPixelSpacing {_mm(series.pixel_spacing)} at the detector, not corrected "
            "for magnification"
        )
    return (
        f"ImagerPixelSpacing corrected by magnification {series.magnification:.3f}: "
        f"{_mm(series.pixel_spacing)}"
    )
