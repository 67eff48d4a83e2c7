"""lungs-map: a MONAI Application Package that segments the lungs of a CT series.

Reads every DICOM file under the input path, takes the CT series with the most instances,
thresholds air (HU < -400) and keeps the largest air components that do not touch the image
border (the lungs), and writes one DICOM Segmentation to <output path>/seg.dcm.

Paths follow the MAP conventions: HOLOSCAN_INPUT_PATH / HOLOSCAN_OUTPUT_PATH (else
MONAI_INPUTPATH / MONAI_OUTPUTPATH, else app.json), relative ones resolved against
HOLOSCAN_WORKDIR (else app.json's workingDirectory).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from scipy import ndimage

APP_NAME = "lungs-map"
APP_VERSION = "1.0.0"
APP_MANIFEST = Path(os.environ.get("HOLOSCAN_APP_MANIFEST_PATH", "/etc/holoscan/app.json"))
AIR_HU = -400.0
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"


def log(message: str) -> None:
    print(f"[{APP_NAME}] {message}", flush=True)


def manifest() -> dict:
    try:
        return json.loads(APP_MANIFEST.read_text())
    except (OSError, ValueError):
        return {}


def resolve(kind: str, app: dict) -> Path:
    """The input or output folder (kind "input"/"output") per the MAP environment."""
    env = app.get("environment") or {}
    value = (
        os.environ.get(f"HOLOSCAN_{kind.upper()}_PATH")
        or os.environ.get(f"MONAI_{kind.upper()}PATH")
        or (app.get(kind) or {}).get("path")
        or env.get(f"HOLOSCAN_{kind.upper()}_PATH")
        or f"{kind}/"
    )
    path = Path(value)
    if not path.is_absolute():
        workdir = (
            os.environ.get("HOLOSCAN_WORKDIR")
            or app.get("workingDirectory")
            or env.get("HOLOSCAN_WORKDIR")
            or "/var/holoscan"
        )
        path = Path(workdir) / path
    return path


def read_ct_series(folder: Path) -> list[pydicom.Dataset]:
    """Every readable single-frame CT image under folder, grouped; returns the largest series."""
    series: dict[str, list[pydicom.Dataset]] = defaultdict(list)
    files = skipped = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        files += 1
        try:
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, OSError, ValueError):
            skipped += 1
            continue
        if (
            ds.get("Modality") != "CT"
            or ds.get("SOPClassUID") == ENHANCED_CT_IMAGE_STORAGE
            or "PixelData" not in ds
            or "ImagePositionPatient" not in ds
            or "ImageOrientationPatient" not in ds
        ):
            skipped += 1
            continue
        series[str(ds.SeriesInstanceUID)].append(ds)
    log(f"read {files} files under {folder}: {files - skipped} CT images in {len(series)} series")
    if not series:
        return []
    chosen = max(series.values(), key=len)
    log(
        f"chose series {chosen[0].SeriesInstanceUID} "
        f"({chosen[0].get('SeriesDescription', '')!s}, {len(chosen)} instances)"
    )
    return chosen


def sort_along_normal(datasets: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    orientation = np.array([float(v) for v in datasets[0].ImageOrientationPatient])
    normal = np.cross(orientation[:3], orientation[3:])

    def position(ds: pydicom.Dataset) -> float:
        return float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient]))

    return sorted(datasets, key=position)


def hounsfield(datasets: list[pydicom.Dataset]) -> np.ndarray:
    slices = []
    for ds in datasets:
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        slices.append(ds.pixel_array.astype(np.float32) * slope + intercept)
    return np.stack(slices)


def segment_lungs(volume: np.ndarray) -> np.ndarray:
    """Air inside the body: the largest air components not touching the in-plane border."""
    air = volume < AIR_HU
    labels, count = ndimage.label(air)
    if count == 0:
        return np.zeros(volume.shape, dtype=bool)
    border = np.unique(
        np.concatenate(
            [
                labels[:, 0, :].ravel(),
                labels[:, -1, :].ravel(),
                labels[:, :, 0].ravel(),
                labels[:, :, -1].ravel(),
            ]
        )
    )
    sizes = ndimage.sum_labels(air, labels, index=np.arange(1, count + 1))
    sizes[border[border > 0] - 1] = 0  # outside air touches the border
    order = np.argsort(sizes)[::-1]
    keep = [i + 1 for i in order[:2] if sizes[i] > 0 and sizes[i] >= 0.1 * sizes[order[0]]]
    mask = np.isin(labels, keep)
    for index in range(mask.shape[0]):  # vessels inside the lungs are not holes in the lungs
        mask[index] = ndimage.binary_fill_holes(mask[index])
    return mask


def write_segmentation(
    datasets: list[pydicom.Dataset], mask: np.ndarray, out: Path
) -> hd.seg.Segmentation:
    algorithm = hd.AlgorithmIdentificationSequence(
        name=APP_NAME,
        family=codes.cid7162.ArtificialIntelligence,
        version=APP_VERSION,
    )
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Lungs",
        segmented_property_category=Code("91723000", "SCT", "Anatomical Structure"),
        segmented_property_type=Code("39607008", "SCT", "Lung"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=mask.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=hd.UID(),
        series_number=901,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="ainode test MAP",
        manufacturer_model_name=APP_NAME,
        software_versions=APP_VERSION,
        device_serial_number="0001",
        series_description="Lungs (lungs-map)",
        content_label="LUNGS",
        content_description="Lung segmentation by threshold",
        content_creator_name="lungs-map^MAP",
        omit_empty_frames=True,
    )
    out.mkdir(parents=True, exist_ok=True)
    target = out / "seg.dcm"
    seg.save_as(target)
    return seg


def main() -> int:
    started = time.monotonic()
    app = manifest()
    source, out = resolve("input", app), resolve("output", app)
    log(f"{APP_NAME} {APP_VERSION}: input {source}, output {out}")
    if not source.is_dir():
        print(f"[{APP_NAME}] error: input folder {source} does not exist", file=sys.stderr)
        return 1
    datasets = read_ct_series(source)
    if not datasets:
        print(f"[{APP_NAME}] error: no CT series found under {source}", file=sys.stderr)
        return 1
    datasets = sort_along_normal(datasets)
    volume = hounsfield(datasets)
    log(f"volume {volume.shape}, HU {volume.min():.0f}..{volume.max():.0f}")
    mask = segment_lungs(volume)
    log(f"lungs: {int(mask.sum())} voxels on {int(mask.any(axis=(1, 2)).sum())} slices")
    seg = write_segmentation(datasets, mask, out)
    log(
        f"wrote {out / 'seg.dcm'} ({int(seg.NumberOfFrames)} frames) "
        f"in {time.monotonic() - started:.1f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
