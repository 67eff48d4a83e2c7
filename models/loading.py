"""Spool files of one series → ``PluginInput``: decoded, modality-LUT'd, with geometry.

* Pixel data of every transfer syntax pydicom can decode with the installed pylibjpeg
  plugins; where none can (JPEG Extended 12-bit, Deflated Image Frame Compression, a broken
  stream) ``PixelDecodeError`` names the instance and the transfer syntax.
* The modality LUT (rescale slope/intercept or a LUT sequence, per frame for enhanced
  objects) is applied, so CT is in Hounsfield units; MONOCHROME1 is inverted over the
  stored value range so that larger is brighter; colour is reduced to luminance.
* Cross-sectional series (frames with a plane position and orientation) get a
  ``highdicom.Volume`` whose slice ``i`` is ``pixels[i]`` and came from ``sources[i]``; the
  volume positions come from highdicom's own spacing checks, so uneven spacing or gantry
  tilt gives ``volume=None`` with pixels and sources still in instance order.
* Projection radiographs are frames with ``PixelSpacing`` or, failing that,
  ``ImagerPixelSpacing``; multi-frame instances name the frame number of each frame.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom
import numpy as np
import pydicom
from highdicom.spatial import get_volume_positions
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.pixels import apply_modality_lut

from models.api import PluginInput, SourceFrame

__all__ = ["PixelDecodeError", "SeriesLoadError", "load_plugin_input"]

log = logging.getLogger(__name__)

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_DEFAULT_SPACING = (1.0, 1.0)


class SeriesLoadError(ValueError):
    """The files cannot form one plugin input; the message says which and why."""


class PixelDecodeError(SeriesLoadError):
    """No installed codec decodes an instance's pixel data."""


@dataclass(frozen=True)
class _Frames:
    dataset: Dataset
    pixels: np.ndarray  # (frames, rows, columns) float32, modality LUT applied
    positions: list[list[float]] | None  # per frame ImagePositionPatient
    orientation: list[float] | None


def _transfer_syntax(ds: Dataset) -> pydicom.uid.UID:
    return pydicom.uid.UID(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))


def _decode(ds: Dataset, path: Path) -> np.ndarray:
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        raise SeriesLoadError(f"{path.name}: instance {ds.SOPInstanceUID} has no pixel data")
    try:
        return ds.pixel_array
    except Exception as exc:
        syntax = _transfer_syntax(ds)
        name = syntax.name if syntax else "unknown transfer syntax"
        reason = " ".join(str(exc).split())[:400] or type(exc).__name__
        raise PixelDecodeError(
            f"cannot decode pixel data of instance {ds.SOPInstanceUID} in {name} ({syntax}): "
            f"no installed codec handles it ({reason}); install a decoder for this transfer "
            "syntax (e.g. GDCM) or have the sender transcode it"
        ) from exc


def _functional(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """The item of ``sequence`` for ``frame`` (0-based): per-frame first, then shared."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared = ds.get("SharedFunctionalGroupsSequence")
    groups = [per_frame[frame]] if per_frame and frame < len(per_frame) else []
    groups += [shared[0]] if shared else []
    for group in groups:
        if sequence in group and group[sequence].value:
            return group[sequence].value[0]
    return None


def _value_range(ds: Dataset) -> tuple[float, float]:
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    if int(ds.get("PixelRepresentation", 0)) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _to_float_frames(ds: Dataset, raw: np.ndarray) -> np.ndarray:
    frames_count = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1))
    if frames_count == 1:
        raw = raw[np.newaxis]
    if samples > 1:  # colour (pydicom hands YBR as RGB): ITU-R BT.601 luminance
        return raw.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    enhanced = "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds
    low, high = _value_range(ds)
    if enhanced:
        out = np.empty(raw.shape, np.float32)
        for index in range(raw.shape[0]):
            item = _functional(ds, index, "PixelValueTransformationSequence")
            slope = float(getattr(item, "RescaleSlope", 1.0)) if item is not None else 1.0
            intercept = float(getattr(item, "RescaleIntercept", 0.0)) if item is not None else 0.0
            out[index] = raw[index].astype(np.float32) * slope + intercept
        first = _functional(ds, 0, "PixelValueTransformationSequence")
        if first is not None:
            slope = float(getattr(first, "RescaleSlope", 1.0))
            intercept = float(getattr(first, "RescaleIntercept", 0.0))
            low, high = sorted((low * slope + intercept, high * slope + intercept))
    else:
        out = np.asarray(apply_modality_lut(raw, ds), dtype=np.float32)
        if "RescaleSlope" in ds or "RescaleIntercept" in ds:
            slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
            intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
            low, high = sorted((low * slope + intercept, high * slope + intercept))
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        out = np.float32(low + high) - out
    return out


def _geometry(ds: Dataset, frames: int) -> tuple[list[list[float]] | None, list[float] | None]:
    if "PerFrameFunctionalGroupsSequence" in ds:
        positions = []
        for index in range(frames):
            item = _functional(ds, index, "PlanePositionSequence")
            if item is None or "ImagePositionPatient" not in item:
                return None, None
            positions.append([float(v) for v in item.ImagePositionPatient])
        orientation = _functional(ds, 0, "PlaneOrientationSequence")
        if orientation is None:
            return None, None
        return positions, [float(v) for v in orientation.ImageOrientationPatient]
    if "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds and frames == 1:
        return [[float(v) for v in ds.ImagePositionPatient]], [
            float(v) for v in ds.ImageOrientationPatient
        ]
    return None, None


def _pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    item = _functional(ds, 0, "PixelMeasuresSequence")
    for source in (item, ds):
        if source is None:
            continue
        for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
            value = source.get(keyword)
            if value and len(value) == 2 and all(float(v) > 0 for v in value):
                return float(value[0]), float(value[1])
    return None


def _header(ds: Dataset) -> Dataset:
    """A new dataset with every element of ``ds`` but the pixel data (``ds`` is untouched)."""
    header = Dataset()
    for element in ds:
        if element.keyword not in _PIXEL_KEYWORDS:
            header.add(element)
    header.file_meta = getattr(ds, "file_meta", FileMetaDataset())
    return header


def _instance_order(ds: Dataset) -> tuple[int, str]:
    return int(ds.get("InstanceNumber", 0) or 0), str(ds.SOPInstanceUID)


def _read(path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path)
    except Exception as exc:
        raise SeriesLoadError(f"{path}: not readable as DICOM: {exc}") from exc


def load_plugin_input(paths: Sequence[Path | str]) -> PluginInput:
    """Build the PluginInput of one series from its spool files (in any order)."""
    if not paths:
        raise SeriesLoadError("no files given for the series")
    loaded = [(Path(p), _read(Path(p))) for p in paths]
    for path, ds in loaded:
        missing = [
            k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID") if not ds.get(k)
        ]
        if missing:
            raise SeriesLoadError(f"{path.name}: the instance has no {', '.join(missing)}")
    series_uids = {str(ds.SeriesInstanceUID) for _, ds in loaded}
    if len(series_uids) != 1:
        raise SeriesLoadError(f"files belong to {len(series_uids)} series, expected one")
    loaded.sort(key=lambda item: _instance_order(item[1]))
    shapes = set()
    frames: list[_Frames] = []
    for path, ds in loaded:
        pixels = _to_float_frames(ds, _decode(ds, path))
        shapes.add(pixels.shape[1:])
        positions, orientation = _geometry(ds, pixels.shape[0])
        frames.append(_Frames(ds, pixels, positions, orientation))
    if len(shapes) != 1:
        raise SeriesLoadError(f"frames of the series differ in size: {sorted(shapes)}")

    first = frames[0].dataset
    sources: list[SourceFrame] = []
    for item in frames:
        count = item.pixels.shape[0]
        multi = int(item.dataset.get("NumberOfFrames", 1) or 1) > 1
        for index in range(count):
            sources.append(
                SourceFrame(
                    str(item.dataset.SOPClassUID),
                    str(item.dataset.SOPInstanceUID),
                    index + 1 if multi else None,
                )
            )
    pixels = np.concatenate([item.pixels for item in frames])
    spacing = _pixel_spacing(first)
    volume = None
    orientations = {tuple(item.orientation) for item in frames if item.orientation is not None}
    has_geometry = all(item.positions is not None for item in frames) and len(orientations) == 1
    if has_geometry and spacing is not None and pixels.shape[0] > 1:
        order, volume = _as_volume(frames, pixels, spacing, first)
        if volume is not None:
            pixels = pixels[order]
            sources = [sources[i] for i in order]
    if spacing is None:
        log.warning(
            "series %s has no PixelSpacing or ImagerPixelSpacing; assuming 1 mm",
            first.SeriesInstanceUID,
        )
        spacing = _DEFAULT_SPACING
    return PluginInput(
        study_instance_uid=str(first.StudyInstanceUID),
        series_instance_uid=str(first.SeriesInstanceUID),
        modality=str(first.get("Modality", "")),
        pixels=np.ascontiguousarray(pixels, dtype=np.float32),
        sources=tuple(sources),
        pixel_spacing=spacing,
        headers=tuple(_header(item.dataset) for item in frames),
        volume=volume,
        photometric_interpretation=str(first.get("PhotometricInterpretation", "MONOCHROME2")),
    )


def _as_volume(
    frames: list[_Frames],
    pixels: np.ndarray,
    spacing: tuple[float, float],
    first: Dataset,
) -> tuple[list[int], highdicom.Volume | None]:
    """Slice order and Volume, or ([], None) where highdicom finds no regular volume."""
    orientation = frames[0].orientation
    assert orientation is not None
    all_positions = [p for item in frames for p in (item.positions or [])]
    slice_spacing, indices = get_volume_positions(all_positions, orientation)
    if slice_spacing is None or indices is None:
        log.info(
            "series %s is not a regular volume (uneven spacing or tilt); no Volume",
            first.SeriesInstanceUID,
        )
        return [], None
    if len(set(indices)) != len(indices):
        return [], None
    order = [0] * len(indices)
    for frame, index in enumerate(indices):
        order[index] = frame
    volume = highdicom.Volume.from_attributes(
        array=pixels[order],
        image_position=all_positions[order[0]],
        image_orientation=orientation,
        pixel_spacing=spacing,
        spacing_between_slices=slice_spacing,
        coordinate_system="PATIENT",
        frame_of_reference_uid=first.get("FrameOfReferenceUID"),
    )
    return order, volume
