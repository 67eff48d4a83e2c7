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
* Projection radiographs are frames; multi-frame instances name the frame number of each.
* The pixel spacing is ``models.spacing``'s verdict (PixelSpacing, else ImagerPixelSpacing
  divided by the radiographic magnification); with none, ``spacing_source`` is NONE and
  ``pixel_spacing`` is one pixel, never an assumed millimetre.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom
import numpy as np
import pydicom
from highdicom.spatial import get_volume_positions
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.pixels import apply_modality_lut, pixel_array

from models.api import PluginInput, SourceFrame
from models.spacing import spacing_of_dataset

__all__ = ["PixelDecodeError", "SeriesLoadError", "load_plugin_input"]

log = logging.getLogger(__name__)

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_ONE_PIXEL = (1.0, 1.0)  # PluginInput.pixel_spacing without a spacing: pixels, not mm


class SeriesLoadError(ValueError):
    """The files cannot form one plugin input; the message says which and why."""


class PixelDecodeError(SeriesLoadError):
    """No installed codec decodes an instance's pixel data."""


@dataclass(frozen=True)
class _Instance:
    """One decoded instance, before its frames go to their place in the series array."""

    dataset: Dataset
    raw: np.ndarray  # as decoded: (rows, columns[, samples]) or (frames, rows, columns[, samples])
    frames: int
    positions: list[list[float]] | None  # per frame ImagePositionPatient
    orientation: list[float] | None


def _transfer_syntax(ds: Dataset) -> pydicom.uid.UID:
    return pydicom.uid.UID(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))


def _decode(ds: Dataset, path: Path) -> np.ndarray:
    if not any(k in ds for k in _PIXEL_KEYWORDS):
        raise SeriesLoadError(f"{path.name}: instance {ds.SOPInstanceUID} has no pixel data")
    # Uncompressed frames whose stored bits fill their allocation need no correction: a
    # read-only view on the file's bytes, so each frame is copied once (into the series
    # array) instead of twice. Fresh memory is what a large series mostly pays for.
    view = not _transfer_syntax(ds).is_encapsulated and ds.get("BitsStored") == ds.get(
        "BitsAllocated"
    )
    try:
        return pixel_array(ds, view_only=view)
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


def _frame_count(ds: Dataset) -> int:
    return int(ds.get("NumberOfFrames", 1) or 1)


def _frame_shape(ds: Dataset, raw: np.ndarray) -> tuple[int, int]:
    """(rows, columns) of the decoded frames (colour samples are reduced to luminance)."""
    shape = raw.shape[-3:-1] if int(ds.get("SamplesPerPixel", 1)) > 1 else raw.shape[-2:]
    return int(shape[0]), int(shape[1])


def _is_plain_rescale(ds: Dataset, raw: np.ndarray) -> bool:
    """Slope 1 and a whole intercept over integers of up to 16 bits: float32 is exact."""
    if ds.get("ModalityLUTSequence") or not ("RescaleSlope" in ds and "RescaleIntercept" in ds):
        return False
    intercept = float(ds.RescaleIntercept)
    return (
        float(ds.RescaleSlope) == 1.0
        and intercept.is_integer()
        and abs(intercept) < 2**23
        and raw.dtype.kind in "iu"
        and raw.dtype.itemsize <= 2
    )


def _to_float_frames(ds: Dataset, raw: np.ndarray, out: np.ndarray) -> None:
    """Write the float32 frames (modality LUT applied) of ``raw`` into ``out``."""
    samples = int(ds.get("SamplesPerPixel", 1))
    if _frame_count(ds) == 1:
        raw = raw[np.newaxis]
    if samples > 1:  # colour (pydicom hands YBR as RGB): ITU-R BT.601 luminance
        out[...] = raw.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return
    enhanced = "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds
    low, high = _value_range(ds)
    if enhanced:
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
        if _is_plain_rescale(ds, raw):
            # the common CT case, without pydicom's float64 temporaries (same values)
            np.add(raw, np.float32(float(ds.RescaleIntercept)), out=out, dtype=np.float32)
        else:
            out[...] = apply_modality_lut(raw, ds)
        if "RescaleSlope" in ds or "RescaleIntercept" in ds:
            slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
            intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
            low, high = sorted((low * slope + intercept, high * slope + intercept))
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":
        np.subtract(np.float32(low + high), out, out=out)


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


def _strip_pixels(ds: Dataset) -> Dataset:
    """``ds`` without its pixel data (and pydicom's decoded copy): the header plugins get.

    The dataset is the one this module read, so it is emptied in place rather than copied
    element by element (which would decode every element of every header).
    """
    for keyword in _PIXEL_KEYWORDS:
        if keyword in ds:
            del ds[keyword]
    if not hasattr(ds, "file_meta"):
        ds.file_meta = FileMetaDataset()
    return ds


def _instance_order(ds: Dataset) -> tuple[int, str]:
    return int(ds.get("InstanceNumber", 0) or 0), str(ds.SOPInstanceUID)


def _read(path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path)
    except Exception as exc:
        raise SeriesLoadError(f"{path}: not readable as DICOM: {exc}") from exc


class _PreparedArray:
    """The float32 series array, first touched on a thread.

    First touching a few hundred MB (the kernel zeroing every page) takes 0.1 to 0.5 s; done
    beside the parsing of the files, which holds the GIL while numpy's fill releases it, it
    costs no wall time on a machine with a second core.
    """

    def __init__(self, shape: tuple[int, ...] | None) -> None:
        self._array = None if shape is None else np.empty(shape, np.float32)  # not touched yet
        self._thread: threading.Thread | None = None
        if self._array is not None:
            self._thread = threading.Thread(
                target=self._array.fill, args=(0.0,), name="page-in", daemon=True
            )
            self._thread.start()

    @classmethod
    def for_series(cls, first: Dataset, files: int) -> _PreparedArray:
        """The array for ``files`` instances like ``first`` (single-frame, greyscale or colour
        reduced to luminance); none for anything else."""
        rows, columns = first.get("Rows"), first.get("Columns")
        if not rows or not columns or _frame_count(first) != 1 or files < 2:
            return cls(None)
        return cls((files, int(rows), int(columns)))

    def take(self, shape: tuple[int, ...]) -> np.ndarray:
        """The prepared array if the series has this shape, else a new one."""
        if self._thread is not None:
            self._thread.join()
        array, self._array = self._array, None
        if array is not None and array.shape == shape:
            return array
        return np.empty(shape, np.float32)


def load_plugin_input(paths: Sequence[Path | str]) -> PluginInput:
    """Build the PluginInput of one series from its spool files (in any order)."""
    if not paths:
        raise SeriesLoadError("no files given for the series")
    loaded = [(Path(paths[0]), _read(Path(paths[0])))]
    # the series array is paged in on another core while the rest of the files are parsed
    prepared = _PreparedArray.for_series(loaded[0][1], len(paths))
    loaded += [(Path(p), _read(Path(p))) for p in paths[1:]]
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
    instances: list[_Instance] = []
    shapes = set()
    for path, ds in loaded:
        raw = _decode(ds, path)
        shapes.add(_frame_shape(ds, raw))
        frames = _frame_count(ds)
        positions, orientation = _geometry(ds, frames)
        instances.append(_Instance(ds, raw, frames, positions, orientation))
    if len(shapes) != 1:
        raise SeriesLoadError(f"frames of the series differ in size: {sorted(shapes)}")

    first = instances[0].dataset
    sources: list[SourceFrame] = []
    for item in instances:
        multi = item.frames > 1
        for index in range(item.frames):
            sources.append(
                SourceFrame(
                    str(item.dataset.SOPClassUID),
                    str(item.dataset.SOPInstanceUID),
                    index + 1 if multi else None,
                )
            )
    total = len(sources)
    resolved = spacing_of_dataset(first)
    spacing = resolved.spacing
    # slice order first, from the headers, so that every frame is written once, in place
    order: list[int] | None = None
    slice_spacing = None
    orientations = {tuple(item.orientation) for item in instances if item.orientation is not None}
    has_geometry = all(item.positions is not None for item in instances) and len(orientations) == 1
    if has_geometry and spacing is not None and total > 1:
        order, slice_spacing = _volume_order(instances, first)
    place = np.arange(total)
    if order is not None:
        place[order] = np.arange(total)  # frame i (instance order) goes to place[i]
        sources = [sources[i] for i in order]
    pixels = prepared.take((total, *shapes.pop()))
    start = 0
    for item in instances:
        slots = place[start : start + item.frames]
        start += item.frames
        if item.frames == 1 or np.array_equal(slots, np.arange(slots[0], slots[0] + item.frames)):
            _to_float_frames(item.dataset, item.raw, pixels[slots[0] : slots[0] + item.frames])
        else:
            converted = np.empty((item.frames, *pixels.shape[1:]), np.float32)
            _to_float_frames(item.dataset, item.raw, converted)
            pixels[slots] = converted
    volume = None
    if order is not None:
        assert slice_spacing is not None and spacing is not None
        orientation = instances[0].orientation
        assert orientation is not None
        all_positions = [p for item in instances for p in (item.positions or [])]
        # the Volume shares the pixel array (its array equals ``pixels``, frame for frame)
        volume = highdicom.Volume.from_attributes(
            array=pixels,
            image_position=all_positions[order[0]],
            image_orientation=orientation,
            pixel_spacing=spacing,
            spacing_between_slices=slice_spacing,
            coordinate_system="PATIENT",
            frame_of_reference_uid=first.get("FrameOfReferenceUID"),
        )
    if spacing is None:
        log.warning(
            "series %s: %s; lengths cannot be measured on it",
            first.SeriesInstanceUID,
            resolved.detail,
        )
    return PluginInput(
        study_instance_uid=str(first.StudyInstanceUID),
        series_instance_uid=str(first.SeriesInstanceUID),
        modality=str(first.get("Modality", "")),
        pixels=pixels,
        sources=tuple(sources),
        pixel_spacing=_ONE_PIXEL if spacing is None else spacing,
        headers=tuple(_strip_pixels(item.dataset) for item in instances),
        volume=volume,
        photometric_interpretation=str(first.get("PhotometricInterpretation", "MONOCHROME2")),
        spacing_source=resolved.source,
        magnification=resolved.magnification,
        files=tuple(path for path, _ in loaded),
    )


def _volume_order(instances: list[_Instance], first: Dataset) -> tuple[list[int] | None, float]:
    """Slice order and spacing, or (None, 0) where highdicom finds no regular volume."""
    orientation = instances[0].orientation
    assert orientation is not None
    all_positions = [p for item in instances for p in (item.positions or [])]
    slice_spacing, indices = get_volume_positions(all_positions, orientation)
    if slice_spacing is None or indices is None:
        log.info(
            "series %s is not a regular volume (uneven spacing or tilt); no Volume",
            first.SeriesInstanceUID,
        )
        return None, 0.0
    if len(set(indices)) != len(indices):
        return None, 0.0
    order = [0] * len(indices)
    for frame, index in enumerate(indices):
        order[index] = frame
    return order, slice_spacing
