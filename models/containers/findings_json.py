"""``findings.json``: what a product writes when it leaves the DICOM to ainode.

The document is ``models.findings_codec``'s (contract ``ainode-findings/1``); masks are files
beside it, NIfTI (``.nii``/``.nii.gz``) or NumPy (``.npy``):

* ``.npy``: shape (frames, rows, columns) of the input, frames in the order ``task.json``
  lists them (``ainode.frames``).
* NIfTI: where the input is a volume and the file has an affine (sform or qform code > 0),
  its grid is matched to the input through both affines (axes may be permuted or flipped, as
  dcm2niix and MONAI write them; a grid that needs resampling is refused). Otherwise the
  voxel axes are (column, row, frame), the order nibabel reads a DICOM-derived image in.
* ``{"file": F, "label": N}`` takes the voxels equal to N of a label map; without a label a
  mask is on where non-zero (a float mask in [0, 1] stays fractional).
* ``{"file": F, "origin": [f, r, c], "volume_shape": [...]}``: a ``.npy`` of the box around
  the mask only (``models.api.MaskBox``), ``volume_shape`` the input's; ``write_findings``
  writes boxed segments so, full-volume ones as NIfTI.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from models.api import Findings, PluginInput
from models.findings_codec import FindingsDocumentError, MaskReference, box_json, decode, encode

__all__ = ["FINDINGS_FILE", "FindingsFileError", "read_findings", "write_findings"]

FINDINGS_FILE = "findings.json"
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_NIFTI_TO_INPUT = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], float)


class FindingsFileError(ValueError):
    """findings.json or one of its masks cannot be used; the message says which and why."""


def read_findings(folder: Path, series: PluginInput) -> Findings:
    """The Findings in ``folder/findings.json``, masks on the grid of ``series``."""
    path = folder / FINDINGS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FindingsFileError(f"{FINDINGS_FILE} is not readable JSON: {exc}") from exc

    def mask_of(reference: MaskReference) -> np.ndarray:
        if reference.file is None:
            raise ValueError('a mask in findings.json is a file: {"file": "mask.nii.gz"}')
        if reference.volume_shape is not None:
            return _box_data(folder, reference, series)
        return _mask_data(folder, reference.file, series)

    try:
        return decode(data, series.sources, mask_of)
    except FindingsDocumentError as exc:
        raise FindingsFileError(f"{FINDINGS_FILE} {exc}") from exc


def _mask_path(folder: Path, name: str) -> Path:
    path = (folder / name).resolve()
    if not path.is_relative_to(folder.resolve()) or not path.is_file():
        raise ValueError(f"mask {name} is not a file in the output folder")
    return path


def _box_data(folder: Path, reference: MaskReference, series: PluginInput) -> np.ndarray:
    """The box of a boxed mask: a .npy in (frames, rows, columns) order, placed by the codec."""
    name = str(reference.file)
    if not name.endswith(".npy"):
        raise ValueError(f"mask {name}: a boxed mask (origin, volume_shape) is a .npy file")
    if tuple(reference.volume_shape or ()) != series.shape:
        raise ValueError(
            f"mask {name} has volume_shape {reference.volume_shape}; the input is "
            f"{series.shape} (frames, rows, columns)"
        )
    return np.load(_mask_path(folder, name), allow_pickle=False)


def _mask_data(folder: Path, name: str, series: PluginInput) -> np.ndarray:
    path = _mask_path(folder, name)
    if name.endswith(".npy"):
        data = np.load(path, allow_pickle=False)
        if data.shape != series.shape:
            raise ValueError(
                f"mask {name} has shape {data.shape}; the input is {series.shape} "
                "(frames, rows, columns)"
            )
        return data
    if name.endswith((".nii", ".nii.gz")):
        return _nifti_on_input(path, series)
    raise ValueError(f"mask {name}: masks are .nii, .nii.gz or .npy files")


def _nifti_on_input(path: Path, series: PluginInput) -> np.ndarray:
    import nibabel

    image = nibabel.load(path)
    data = np.asanyarray(image.dataobj)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[..., np.newaxis]
    if data.ndim != 3:
        raise ValueError(f"mask {path.name} has {data.ndim} dimensions, expected 3")
    has_affine = int(image.header["sform_code"]) > 0 or int(image.header["qform_code"]) > 0
    if series.volume is not None and has_affine:
        return _resliced(data, np.asarray(image.affine, float), series, path.name)
    frames, rows, columns = series.shape
    if data.shape != (columns, rows, frames):
        raise ValueError(
            f"mask {path.name} has shape {data.shape}; on this input a NIfTI mask without "
            f"patient geometry is (columns, rows, frames) = {(columns, rows, frames)}"
        )
    return data.transpose(2, 1, 0)


def _resliced(data: np.ndarray, affine: np.ndarray, series: PluginInput, name: str) -> np.ndarray:
    """The NIfTI data on the input's (frame, row, column) grid; the grids must coincide up to
    permuted and flipped axes."""
    assert series.volume is not None
    to_nifti = np.linalg.inv(affine) @ _LPS_TO_RAS @ np.asarray(series.volume.affine, float)
    linear, offset = to_nifti[:3, :3], to_nifti[:3, 3]
    rounded = np.round(linear)
    if (
        not np.allclose(linear, rounded, atol=1e-3)
        or not np.allclose(offset, np.round(offset), atol=1e-2)
        or sorted(np.abs(rounded).sum(axis=0)) != [1, 1, 1]
        or sorted(np.abs(rounded).sum(axis=1)) != [1, 1, 1]
    ):
        raise ValueError(
            f"mask {name} is not on the input's voxel grid (its affine differs by more than an "
            "axis order or flip); resample it onto the input series first"
        )
    axes = [int(np.flatnonzero(rounded[:, a])[0]) for a in range(3)]  # NIfTI axis of input a
    indices = []
    for a, size in enumerate(series.shape):
        j = axes[a]
        index = rounded[j, a] * np.arange(size) + round(offset[j])
        if index.min() < 0 or index.max() >= data.shape[j]:
            raise ValueError(f"mask {name} does not cover the input (axis {j} of the NIfTI)")
        indices.append(index.astype(np.intp))
    return np.transpose(data, axes)[np.ix_(*indices)]


def write_findings(findings: Findings, series: PluginInput, folder: Path) -> Path:
    """Write ``findings.json`` and one mask per segment into ``folder``: NIfTI, or the box
    as ``.npy`` for a boxed mask."""
    import nibabel

    folder.mkdir(parents=True, exist_ok=True)
    if series.volume is not None:
        affine, code = _LPS_TO_RAS @ np.asarray(series.volume.affine) @ _NIFTI_TO_INPUT, 1
    else:
        row, column = series.pixel_spacing
        affine, code = np.diag([column, row, 1.0, 1.0]), 0
    references: list[dict[str, object]] = []
    for index, segment in enumerate(findings.segments):
        if box_json(segment):  # a boxed mask stays a box: its voxels, not the volume
            np.save(folder / f"mask-{index + 1}.npy", segment.box.array, allow_pickle=False)
            references.append({"file": f"mask-{index + 1}.npy", **box_json(segment)})
            continue
        name = f"mask-{index + 1}.nii.gz"
        mask = segment.box.array
        data = mask.astype(np.uint8 if mask.dtype == np.bool_ else np.float32)
        image = nibabel.Nifti1Image(np.ascontiguousarray(data.transpose(2, 1, 0)), affine)
        image.set_sform(affine, code=code)
        image.set_qform(affine, code=code)
        nibabel.save(image, folder / name)
        references.append({"file": name})
    path = folder / FINDINGS_FILE
    path.write_text(json.dumps(encode(findings, references), indent=1), encoding="utf-8")
    return path
