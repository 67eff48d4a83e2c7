"""Boxed masks (``models.api.MaskBox``): validated where they are made, cut tight around the
voxels, and carried as boxes everywhere findings travel: the isolated interpreter's pipe,
findings.json, the shadow record. Documents and records written with full masks still read."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from outputs_support import synthetic_ct
from pydicom.sr.codedict import codes

from models import findings_codec as codec
from models import shadow
from models.api import AlgorithmIdentification, Findings, MaskBox, Segment, SourceFrame
from models.containers.findings_json import FindingsFileError, read_findings, write_findings
from models.isolation import decode_findings, encode_findings, read_message, write_message

VOLUME = (6, 16, 24)


def nodule_mask() -> np.ndarray:
    mask = np.zeros(VOLUME, bool)
    mask[2:4, 5:8, 10:12] = True
    mask[3, 9, 13] = True
    return mask


def segment(key: str, mask: np.ndarray | MaskBox) -> Segment:
    return Segment(key, key, codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Nodule, mask)


def findings_of(*segments: Segment) -> Findings:
    return Findings(AlgorithmIdentification("p", "1"), segments=segments)


SOURCES = tuple(SourceFrame("1.2", f"1.2.3.{i}") for i in range(VOLUME[0]))


@pytest.mark.parametrize(
    ("array", "origin", "volume", "message"),
    [
        (np.ones((2, 2), bool), (0, 0, 0), VOLUME, r"\(frames, rows, columns\)"),
        (np.ones((2, 2, 2), np.uint8), (0, 0, 0), VOLUME, "bool or float"),
        (np.ones((2, 2, 2), bool), (5, 0, 0), VOLUME, "2 frames from frames index 5"),
        (np.ones((2, 2, 2), bool), (0, -1, 0), VOLUME, "rows"),
        (np.ones((2, 2, 2), bool), (0, 0), VOLUME, r"\(frame, row, column\)"),
        (np.ones((2, 2, 2), bool), (0, 0, 0.5), VOLUME, "three integers"),
        (np.ones((2, 2, 2), bool), (0, 0, 0), (0, 16, 24), "positive"),
    ],
)
def test_a_box_that_does_not_fit_its_volume_is_refused(array, origin, volume, message) -> None:
    with pytest.raises(ValueError, match=message):
        MaskBox(array, origin, volume)


def test_around_cuts_a_tight_copy_that_expands_back() -> None:
    mask = nodule_mask()
    box = MaskBox.around(mask)
    assert box.origin == (2, 5, 10) and box.array.shape == (2, 5, 4)
    assert box.volume_shape == VOLUME and box.array.base is None
    np.testing.assert_array_equal(box.full(), mask)
    np.testing.assert_array_equal(box.frames_present, [2, 3])
    for index in range(VOLUME[0]):
        np.testing.assert_array_equal(box.frame(index), mask[index])
    # a box of a box: placed where the inner one was
    again = MaskBox.around(np.pad(box.array, 1), (1, 4, 9), VOLUME)
    assert (again.origin, again.array.shape) == (box.origin, box.array.shape)
    empty = MaskBox.around(np.zeros(VOLUME, bool))
    assert empty.array.size == 0 and len(empty.frames_present) == 0
    assert not empty.frame(3).any() and empty.frame(3).shape == VOLUME[1:]


def test_a_cropped_segment_reads_as_the_full_one() -> None:
    full = segment("n", nodule_mask())
    cropped = full.cropped()
    assert isinstance(cropped.mask, MaskBox) and cropped.shape == full.shape == VOLUME
    np.testing.assert_array_equal(cropped.binary, full.binary)
    np.testing.assert_array_equal(cropped.frames_present, full.frames_present)
    np.testing.assert_array_equal(cropped.frame(3), full.frame(3))
    probabilities = segment("p", nodule_mask() * np.float32(0.4)).cropped()
    assert probabilities.box.array.dtype == np.float32 and not probabilities.binary.any()


def test_findings_compare_volume_shapes_not_array_shapes() -> None:
    full, box = segment("a", nodule_mask()), segment("b", MaskBox.around(nodule_mask()))
    assert findings_of(full, box).segments[1].shape == VOLUME
    other = segment("c", MaskBox(np.ones((1, 1, 1), bool), (0, 0, 0), (7, 16, 24)))
    with pytest.raises(ValueError, match="one volume"):
        findings_of(full, other)


def test_boxes_cross_the_isolation_pipe_as_boxes() -> None:
    findings = findings_of(
        segment("full", nodule_mask()),
        segment("boxed", MaskBox.around(nodule_mask())),
        segment("empty", MaskBox.around(np.zeros(VOLUME, bool))),
    )
    arrays: list[np.ndarray] = []
    header = {"findings": encode_findings(findings, arrays)}
    assert [a.shape for a in arrays] == [VOLUME, (2, 5, 4), (0, 0, 0)]
    stream = io.BytesIO()
    write_message(stream, header, arrays)
    stream.seek(0)
    received = read_message(stream)
    assert received is not None
    back = decode_findings(received[0]["findings"], received[1], SOURCES)
    assert not isinstance(back.segments[0].mask, MaskBox)
    for before, after in zip(findings.segments, back.segments, strict=True):
        assert type(after.mask) is type(before.mask)
        assert after.box.origin == before.box.origin
        np.testing.assert_array_equal(after.binary, before.binary)


def test_documents_with_full_masks_still_read_and_half_a_box_is_refused() -> None:
    findings = findings_of(segment("n", nodule_mask()))
    old = codec.encode(findings, [{"array": 0}])
    back = codec.decode(old, SOURCES, lambda reference: nodule_mask())
    np.testing.assert_array_equal(back.segments[0].mask, nodule_mask())
    half = codec.encode(findings, [{"array": 0, "origin": [2, 5, 10]}])
    with pytest.raises(codec.FindingsDocumentError, match="both origin and volume_shape"):
        codec.decode(half, SOURCES, lambda reference: nodule_mask())
    outside = codec.encode(findings, [{"array": 0, "origin": [5, 5, 10], "volume_shape": VOLUME}])
    with pytest.raises(codec.FindingsDocumentError, match="do not fit"):
        codec.decode(outside, SOURCES, lambda reference: np.ones((2, 2, 2), bool))


def test_shadow_keeps_boxes_and_reads_records_from_before_them(tmp_path) -> None:
    moved = np.roll(nodule_mask(), 1, axis=2)
    full = findings_of(segment("n", nodule_mask()))
    boxed = findings_of(segment("n", MaskBox.around(moved)))
    shadow.save_masks(full, tmp_path / "full.npz")
    shadow.save_masks(boxed, tmp_path / "boxed.npz")
    with np.load(tmp_path / "boxed.npz") as stored:
        assert stored["s0"].shape == (2, 5, 4)
    first, second = (
        shadow._masks(shadow.findings_summary(f, name), tmp_path)["SCT:27925004"][1]
        for f, name in ((full, "full.npz"), (boxed, "boxed.npz"))
    )
    assert isinstance(second, MaskBox) and not isinstance(first, MaskBox)
    expected = shadow.dice(nodule_mask(), moved)
    assert 0 < expected < 1
    assert shadow.dice(first, second) == pytest.approx(expected)
    assert shadow.dice(second, second) == 1.0
    far = MaskBox(np.ones((1, 1, 1), bool), (0, 0, 0), VOLUME)
    assert shadow.dice(far, second) == 0.0


def test_findings_json_carries_a_box_as_npy(tmp_path) -> None:
    _, ct = synthetic_ct(tmp_path / "ct")
    mask = np.zeros(ct.shape, bool)
    mask[3:5, 10:14, 20:23] = True
    findings = findings_of(segment("n", MaskBox.around(mask)))
    out = tmp_path / "out"
    write_findings(findings, ct, out)
    reference = json.loads((out / "findings.json").read_text())["segments"][0]["mask"]
    assert reference == {"file": "mask-1.npy", "origin": [3, 10, 20], "volume_shape": [*ct.shape]}
    back = read_findings(out, ct)
    assert isinstance(back.segments[0].mask, MaskBox)
    np.testing.assert_array_equal(back.segments[0].binary, mask)
    document = json.loads((out / "findings.json").read_text())
    document["segments"][0]["mask"]["volume_shape"] = [1, 2, 3]
    (out / "findings.json").write_text(json.dumps(document))
    with pytest.raises(FindingsFileError, match="volume_shape"):
        read_findings(out, ct)
