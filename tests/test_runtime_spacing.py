"""Pixel spacing: which tag gives it, the radiographic magnification, and what happens without
one (no assumed millimetre; a plugin that needs spacing is refused with the header's reason)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from runtime_support import write_plugin

from models.api import PluginInput, SourceFrame, SpacingSource
from models.devices import GpuSlots
from models.discovery import discover
from models.isolation import decode_input, encode_input
from models.loading import load_plugin_input
from models.phantoms.chest_xray import ChestXrayAnatomy, RadiographKind, make_chest_xray
from models.runtime import InputRefused, PluginHost
from models.spacing import spacing_of_attributes, spacing_of_dataset

MEASURES = """
    from models.api import AlgorithmIdentification, Findings
    class Measures:
        def __init__(self, manifest):
            self.name, self.version = manifest.name, manifest.version
        def load(self, device):
            pass
        def run(self, series):
            return Findings(algorithm=AlgorithmIdentification(self.name, self.version))
"""


def header(**values: object) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def test_pixel_spacing_is_used_as_the_header_states_it() -> None:
    resolved = spacing_of_dataset(header(PixelSpacing=[0.2, 0.3], ImagerPixelSpacing=[1, 1]))
    assert resolved.source is SpacingSource.PIXEL_SPACING
    assert resolved.spacing == (0.2, 0.3) and resolved.magnification is None


@pytest.mark.parametrize("bad", [[0, 0], [-0.1, 0.1], [0.2], [0.2, 0.2, 0.2], [float("nan"), 1.0]])
def test_unusable_pixel_spacing_is_no_spacing(bad: object) -> None:
    resolved = spacing_of_dataset(header(PixelSpacing=bad))
    assert resolved.source is SpacingSource.NONE and resolved.spacing is None
    assert resolved.detail.startswith("no calibrated pixel spacing (PixelSpacing")
    assert "no ImagerPixelSpacing" in resolved.detail


def test_imager_spacing_is_divided_by_the_estimated_magnification() -> None:
    resolved = spacing_of_dataset(
        header(
            PixelSpacing=[0, 0],  # unusable: the imager spacing takes over
            ImagerPixelSpacing=[0.15, 0.15],
            EstimatedRadiographicMagnificationFactor=1.2,
            DistanceSourceToDetector=1800,
            DistanceSourceToPatient=1000,  # the estimated factor wins over the distances
        )
    )
    assert resolved.source is SpacingSource.IMAGER_PIXEL_SPACING
    assert resolved.magnification == pytest.approx(1.2)
    assert resolved.spacing == pytest.approx((0.125, 0.125))
    assert "EstimatedRadiographicMagnificationFactor" in resolved.detail


def test_source_distances_give_the_magnification_when_no_factor_is_stated() -> None:
    resolved = spacing_of_dataset(
        header(
            ImagerPixelSpacing=[0.15, 0.15],
            EstimatedRadiographicMagnificationFactor=0.5,  # impossible: ignored, said so
            DistanceSourceToDetector=1800,
            DistanceSourceToPatient=1500,
        )
    )
    assert resolved.magnification == pytest.approx(1.2)
    assert resolved.spacing == pytest.approx((0.125, 0.125))
    assert "DistanceSourceToDetector 1800 / DistanceSourceToPatient 1500" in resolved.detail


def test_imager_spacing_without_magnification_is_uncorrected_and_says_so() -> None:
    resolved = spacing_of_dataset(
        header(ImagerPixelSpacing=[0.15, 0.15], DistanceSourceToDetector=1996)
    )
    assert resolved.source is SpacingSource.IMAGER_PIXEL_SPACING
    assert resolved.spacing == (0.15, 0.15) and resolved.magnification is None
    assert "not corrected for magnification" in resolved.detail


def test_index_attributes_give_the_same_verdict_and_multiframe_is_unknown() -> None:
    for bad in ([0.0, 0.0], "abc\\def", ""):
        assert spacing_of_attributes({"PixelSpacing": bad}).source is SpacingSource.NONE
    resolved = spacing_of_attributes({"ImagerPixelSpacing": "0.2\\0.2"})
    assert resolved is not None and resolved.spacing == (0.2, 0.2)
    # an enhanced object's spacing may sit in its functional groups, which are not indexed
    assert spacing_of_attributes({"NumberOfFrames": 96}) is None


def _phantom(tmp_path: Path, *remove: str) -> tuple[Path, Dataset]:
    written = make_chest_xray(
        tmp_path,
        kind=RadiographKind.DX,
        anatomy=ChestXrayAnatomy(ctr=0.5, rows=128, columns=128, seed=7),
    )
    ds = dcmread(written.path)
    for keyword in remove:
        delattr(ds, keyword)
    ds.save_as(written.path)
    return written.path, ds


def test_loader_assumes_no_millimetre_without_spacing(tmp_path: Path, caplog) -> None:
    path, _ = _phantom(tmp_path, "PixelSpacing", "ImagerPixelSpacing")
    with caplog.at_level(logging.WARNING):
        series = load_plugin_input([path])
    assert series.spacing_source is SpacingSource.NONE and not series.has_spacing
    assert series.pixel_spacing == (1.0, 1.0) and series.magnification is None
    assert "assuming" not in caplog.text and "no calibrated pixel spacing" in caplog.text


def test_loader_corrects_imager_spacing_by_the_magnification(tmp_path: Path) -> None:
    path, ds = _phantom(tmp_path, "PixelSpacing")
    series = load_plugin_input([path])
    assert series.spacing_source is SpacingSource.IMAGER_PIXEL_SPACING
    assert series.magnification == pytest.approx(1800 / 1650, rel=1e-6)
    expected = [float(v) / float(ds.EstimatedRadiographicMagnificationFactor) for v in
                ds.ImagerPixelSpacing]  # fmt: skip
    assert series.pixel_spacing == pytest.approx(expected)
    assert series.pixel_spacing == pytest.approx(ChestXrayAnatomy(rows=128, columns=128)
                                                 .pixel_spacing, rel=1e-5)  # fmt: skip


def test_plugin_input_keeps_spacing_and_source_consistent() -> None:
    frame = (SourceFrame("1.2", "1.2.3"),)
    pixels = np.zeros((1, 4, 4), np.float32)
    with pytest.raises(ValueError, match=r"must be \(1\.0, 1\.0\)"):
        PluginInput("1", "2", "DX", pixels, frame, (0.2, 0.2), spacing_source=SpacingSource.NONE)
    with pytest.raises(ValueError, match="magnification"):
        PluginInput("1", "2", "DX", pixels, frame, (0.2, 0.2), magnification=1.1)
    given = PluginInput(
        "1",
        "2",
        "DX",
        pixels,
        frame,
        (0.125, 0.125),
        spacing_source=SpacingSource.IMAGER_PIXEL_SPACING,
        magnification=1.2,
    )
    arrays: list[np.ndarray] = []
    back = decode_input(encode_input(given, arrays), arrays)  # an isolated plugin sees the same
    assert (back.spacing_source, back.magnification) == (SpacingSource.IMAGER_PIXEL_SPACING, 1.2)


@pytest.fixture
def host(tmp_path: Path) -> PluginHost:
    plugins = tmp_path / "plugins"
    write_plugin(plugins / "measures", name="measures", entry="plugin:Measures", code=MEASURES)
    write_plugin(
        plugins / "ratios",
        name="ratios",
        entry="plugin:Measures",
        code=MEASURES,
        extra={"input": {"needs_spacing": False}},
    )
    slots = GpuSlots([], 1, tmp_path / "slots", check_cuda=False)
    return PluginHost(discover([plugins]), slots)


def test_a_plugin_that_needs_spacing_is_refused_with_the_header_reason(tmp_path, host) -> None:
    path, ds = _phantom(tmp_path, "ImagerPixelSpacing")
    ds.PixelSpacing = [0, 0]
    ds.save_as(path)
    series = load_plugin_input([path])
    with pytest.raises(InputRefused) as refused:
        host.run("measures", None, series)
    message = str(refused.value)
    assert message.startswith("measures@1.0.0 does not accept this series")
    assert "needs a calibrated pixel spacing" in message
    assert "PixelSpacing 0.0\\0.0 is not positive; no ImagerPixelSpacing" in message
    # a plugin that declares it can do without spacing runs
    assert host.run("ratios", None, series).algorithm.name == "ratios"
