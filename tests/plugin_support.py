"""Helpers for the reference-plugin tests: a loaded plugin, phantom slice order, and how to
say that dx-chest served another way (a container, Triton) found what it finds in process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from scipy import ndimage

from models.api import Device, Findings, Measurement, Plugin, PluginInput
from models.manifest import load_manifest
from models.runners.python import instantiate

PLUGINS = Path(__file__).resolve().parent.parent / "models" / "plugins"


def loaded_plugin(folder: str) -> Plugin:
    """The plugin in ``models/plugins/<folder>``, loaded on the CPU."""
    instance = instantiate(load_manifest(PLUGINS / folder))
    instance.load(Device())
    return instance


def phantom_order(series: PluginInput, paths: list[Path]) -> list[int]:
    """Phantom slice index of each loaded frame (the loader may reverse the z order)."""
    index = {
        pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: i for i, p in enumerate(paths)
    }
    return [index[source.sop_instance_uid] for source in series.sources]


def ratios(findings: Findings) -> list[Measurement]:
    """The cardiothoracic ratios dx-chest reported (in the finding that draws the widths)."""
    measured = [
        *findings.study_measurements,
        *(m for f in findings.findings for m in f.measurements),
    ]
    return [m for m in measured if m.concept.meaning == "Cardiothoracic ratio"]


# the chest radiographs the dx-chest comparisons run on: kind, photometric, CTR, rows, columns
DX_CHEST_PHANTOMS = [
    ("DX", "MONOCHROME2", 0.42, 512, 512),
    ("DX", "MONOCHROME1", 0.58, 512, 512),
    ("CR", "MONOCHROME1", 0.45, 560, 480),
    ("CR", "MONOCHROME2", 0.61, 480, 560),
]


def dx_chest_phantoms(folder: Path) -> list[PluginInput]:
    """``DX_CHEST_PHANTOMS`` written as DICOM under ``folder`` and loaded as the node does."""
    from models.loading import load_plugin_input
    from models.phantoms.chest_xray import (
        ChestXrayAnatomy,
        Photometric,
        RadiographKind,
        make_chest_xray,
    )

    series = []
    for index, (kind, photometric, ctr, rows, columns) in enumerate(DX_CHEST_PHANTOMS):
        anatomy = ChestXrayAnatomy(ctr=ctr, rows=rows, columns=columns, seed=7100 + index)
        written = make_chest_xray(
            folder / f"cxr{index}",
            kind=RadiographKind(kind),
            photometric=Photometric(photometric),
            anatomy=anatomy,
        )
        series.append(load_plugin_input([written.path]))
    return series


def within_one_pixel(a: np.ndarray, b: np.ndarray) -> bool:
    """Every pixel where the masks differ lies on the one-pixel rim of both."""
    rim_a = ndimage.binary_dilation(a) & ~ndimage.binary_erosion(a)
    rim_b = ndimage.binary_dilation(b) & ~ndimage.binary_erosion(b)
    return bool(np.all(~(a ^ b) | (rim_a & rim_b)))


def assert_same_dx_chest_findings(got: Findings, expected: Findings) -> None:
    """CTR to 1e-4, every mask within one pixel, the same verdict and findings."""
    assert abs(ratios(got)[0].value - ratios(expected)[0].value) <= 1e-4
    assert [s.key for s in got.segments] == [s.key for s in expected.segments]
    for mine, theirs in zip(got.segments, expected.segments, strict=True):
        assert within_one_pixel(mine.binary, theirs.binary), mine.key
    assert got.study_evaluations == expected.study_evaluations
    assert [f.tracking_id for f in got.findings] == [f.tracking_id for f in expected.findings]
