"""Which waiting job a vendor's result belongs to: the series its SEG or SR cites."""

from __future__ import annotations

from pydicom import Dataset

from node.shared_types import OutputKind
from node.vendors.stage import referenced_series


def test_seg_and_sr_name_the_series_they_were_made_from(ct_input, built):
    _, by_kind = built
    seg = by_kind[OutputKind.SEG][0].dataset
    assert referenced_series(seg) == {ct_input.series_instance_uid}
    # an SR's evidence names the images and the SEG it was measured on
    sr = by_kind[OutputKind.SR][0].dataset
    assert referenced_series(sr) == {ct_input.series_instance_uid, seg.SeriesInstanceUID}


def test_a_result_that_cites_no_series_names_none():
    capture = Dataset()
    capture.SOPInstanceUID = "1.2.3"
    assert referenced_series(capture) == frozenset()
