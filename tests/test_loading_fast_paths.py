"""The series loader's fast paths give the values of the plain computation: a slope-1 rescale
in float32, frames written straight to their slice position, headers stripped in place."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
from outputs_support import write_synthetic_ct

from models.loading import _decode, _PreparedArray, load_plugin_input


def _by_uid(paths: list[Path]) -> dict[str, pydicom.Dataset]:
    return {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p) for p in paths)}


def test_slope_one_rescale_is_exact_and_slices_land_in_volume_order(tmp_path: Path) -> None:
    paths = write_synthetic_ct(tmp_path, slices=6, size=16)  # int16, slope 1, intercept -1024
    numbers = [3, 6, 1, 5, 2, 4]  # instance numbers out of step with the slice positions
    for path, number in zip(paths, numbers, strict=True):
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = number
        ds.save_as(path)
    shuffled = list(paths)
    random.Random(2).shuffle(shuffled)
    loaded = load_plugin_input(shuffled)
    files = _by_uid(paths)
    in_order = [files[s.sop_instance_uid] for s in loaded.sources]
    heights = [float(ds.ImagePositionPatient[2]) for ds in in_order]
    assert heights in (sorted(heights), sorted(heights, reverse=True))  # slice order
    assert heights != [
        float(files[str(h.SOPInstanceUID)].ImagePositionPatient[2]) for h in loaded.headers
    ]
    expected = np.stack([ds.pixel_array.astype(np.float64) - 1024.0 for ds in in_order])
    np.testing.assert_array_equal(loaded.pixels, expected.astype(np.float32))
    assert loaded.volume is not None
    np.testing.assert_array_equal(loaded.volume.array, loaded.pixels)
    assert all("PixelData" not in header for header in loaded.headers)
    assert [int(header.InstanceNumber) for header in loaded.headers] == sorted(numbers)


def test_fractional_rescale_takes_the_float64_path(tmp_path: Path) -> None:
    paths = write_synthetic_ct(
        tmp_path, slices=3, size=16, RescaleSlope=0.37, RescaleIntercept=-3.3
    )
    loaded = load_plugin_input(paths)
    files = _by_uid(paths)
    expected = [
        files[s.sop_instance_uid].pixel_array.astype(np.float64) * 0.37 - 3.3
        for s in loaded.sources
    ]
    np.testing.assert_array_equal(loaded.pixels, np.stack(expected).astype(np.float32))


@pytest.mark.corpus
def test_decoding_equals_pydicoms_own_pixel_array_over_the_corpus(corpus: Path) -> None:
    """The loader's decode (a read-only view where no bit correction is due) gives the values
    of ``Dataset.pixel_array`` for every corpus file pydicom can decode, whatever its transfer
    syntax, byte order, Bits Stored or photometric interpretation."""
    compared = views = corrected = 0
    for path in sorted(corpus.rglob("*")):
        if not path.is_file() or "malformed-and-edge" in path.parts:
            continue
        try:
            ds = pydicom.dcmread(path)
            expected = ds.pixel_array
        except Exception:  # no pixel data, or nothing here decodes it: not this test's case
            continue
        actual = _decode(pydicom.dcmread(path), path)
        np.testing.assert_array_equal(actual, expected, err_msg=str(path))
        assert actual.dtype == expected.dtype, path
        compared += 1
        views += not actual.flags.writeable
        corrected += ds.get("BitsStored") != ds.get("BitsAllocated")
    assert compared > 400 and views > 250 and corrected > 100, (compared, views, corrected)


def test_the_prepared_series_array_is_used_only_when_the_series_has_its_shape(
    tmp_path: Path,
) -> None:
    first = pydicom.dcmread(write_synthetic_ct(tmp_path, slices=1, size=16)[0])
    prepared = _PreparedArray.for_series(first, 3)
    array = prepared.take((3, 16, 16))
    assert array.shape == (3, 16, 16) and array.dtype == np.float32 and not array.any()
    # a series that turns out to hold another number of frames gets an array of its own
    assert _PreparedArray.for_series(first, 3).take((5, 16, 16)).shape == (5, 16, 16)
    assert _PreparedArray.for_series(first, 1).take((1, 16, 16)).shape == (1, 16, 16)
