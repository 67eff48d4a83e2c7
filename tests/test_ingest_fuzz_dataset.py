"""Dataset fuzzing (issue #16): the header parse and the truncation check on hostile bytes.

Real datasets from the shared corpus, in Implicit and Explicit VR Little Endian, Explicit VR
Big Endian, deflated and encapsulated, are cut, extended, overwritten, and given absurd
element lengths. ``parse_header`` must return a header or raise ``HeaderError``, and
``check_dataset_end`` return or raise ``HeaderError``: no other exception, and memory that
follows the bytes received, never a declared length. A few of the same datasets then go to a
running node as raw C-STOREs: each is answered with a status and the node keeps serving.
"""

from __future__ import annotations

import contextlib
import os
import random
import tracemalloc
from dataclasses import dataclass
from functools import cache
from io import BytesIO
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.filereader import read_dataset
from pydicom.uid import UID

from node.ingest.dataset_end import HeaderError, check_dataset_end
from node.ingest.header import parse_header
from tests.conftest import corpus_path
from tests.ingest_support import RawInstance, raw_instance, raw_store, running_node

pytestmark = pytest.mark.corpus

#: Small corpus files, by what they exercise.
SEEDS = (
    "transfer-syntaxes/pydicom/MR_small_implicit.dcm",  # Implicit VR Little Endian
    "seg-sr-rt-reference/pydicom/rtplan.dcm",  # implicit, nested sequences
    "malformed-and-edge/pydicom/nested_priv_SQ.dcm",  # implicit, private sequences
    "xr-other/CR000000.dcm",  # Explicit VR Little Endian
    "other-modalities/sm_image.dcm",  # explicit, multi-frame functional groups
    "transfer-syntaxes/pydicom/MR_small_bigendian.dcm",  # Explicit VR Big Endian
    "transfer-syntaxes/pydicom/ExplVR_BigEnd.dcm",  # big endian
    "transfer-syntaxes/pydicom/SC_rgb_rle.dcm",  # encapsulated pixel data (fragments)
    "transfer-syntaxes/fo-dicom/GH227.dcm",  # deflated
)
#: Length values that have broken parsers: none, one short, undefined, huge.
LENGTHS = (0, 1, 2, 3, 7, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFF0, 0xFFFFFFFE, 0xFFFFFFFF)
#: Memory a parse may take beyond a multiple of its input: pydicom's own working set.
PARSE_ALLOWANCE = 8 * 1024 * 1024


@dataclass(frozen=True)
class Seed:
    """A corpus dataset's bytes and where its element length fields are."""

    instance: RawInstance
    #: (offset of a length field, its width in bytes)
    length_fields: tuple[tuple[int, int], ...]

    @property
    def encoding(self) -> tuple[bool, bool]:
        uid = UID(self.instance.transfer_syntax_uid)
        return uid.is_implicit_VR, uid.is_little_endian


@cache
def seeds() -> tuple[Seed, ...]:
    corpus = corpus_path()
    if not (corpus / "CATALOG.md").exists():
        pytest.skip(f"DICOM corpus not found at {corpus} (set AINODE_CORPUS)")
    return tuple(_seed(raw_instance(corpus / name)) for name in SEEDS)


def _seed(instance: RawInstance) -> Seed:
    uid = UID(instance.transfer_syntax_uid)
    fields: list[tuple[int, int]] = []
    if not uid.is_deflated:
        ds = read_dataset(BytesIO(instance.dataset), uid.is_implicit_VR, uid.is_little_endian)
        for tag in ds.keys():  # noqa: SIM118 - raw elements, not converted values
            raw = ds.get_item(tag)
            value_at = getattr(raw, "value_tell", None)
            if value_at is None:
                continue
            vr = instance.dataset[value_at - 4 : value_at - 2]  # there only with a 2-byte length
            short = not uid.is_implicit_VR and vr.isalpha() and vr.isupper()
            fields.append((value_at - 2, 2) if short else (value_at - 4, 4))
    return Seed(instance, tuple(fields))


def mutate(seed: Seed, operations: list[tuple[int, int, bytes]]) -> bytes:
    """Apply (operation, position, bytes) triples: 0 cut, 1 overwrite, 2 insert, 3 delete,
    4 an element's length field set to ``LENGTHS[position % len]``."""
    data = bytearray(seed.instance.dataset)
    little = seed.encoding[1]
    for operation, position, payload in operations:
        at = position % (len(data) + 1)
        if operation == 0:
            del data[at:]
        elif operation == 1:
            data[at : at + len(payload)] = payload
        elif operation == 2:
            data[at:at] = payload
        elif operation == 3:
            del data[at : at + 1 + len(payload) * 8]
        elif seed.length_fields:
            offset, width = seed.length_fields[position % len(seed.length_fields)]
            value = LENGTHS[len(payload) % len(LENGTHS)] & (0xFFFF if width == 2 else 0xFFFFFFFF)
            if offset + width <= len(data):
                data[offset : offset + width] = value.to_bytes(width, "little" if little else "big")
    return bytes(data)


OPERATIONS = st.lists(
    st.tuples(st.integers(0, 4), st.integers(0, 1 << 20), st.binary(max_size=16)),
    min_size=1,
    max_size=6,
)


def _parse(seed: Seed, data: bytes) -> None:
    """``parse_header`` and, from every offset a header could end at, ``check_dataset_end``:
    each returns or raises HeaderError, within memory that follows ``len(data)``."""
    implicit, little = seed.encoding
    tracemalloc.start()
    try:
        with contextlib.suppress(HeaderError):
            parse_header(data, seed.instance.transfer_syntax_uid, seed.instance.sop_class_uid)
        if not UID(seed.instance.transfer_syntax_uid).is_deflated:
            for offset in sorted({0, len(data) // 3, len(data) // 2, len(data)}):
                with contextlib.suppress(HeaderError):
                    check_dataset_end(data, offset, implicit, little)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * len(data) + PARSE_ALLOWANCE, f"{peak} bytes to parse {len(data)}"


#: Examples per property; the slow run (``AINODE_SLOW=1``) takes 25 times as many.
EXAMPLES = 1000 * (25 if os.environ.get("AINODE_SLOW") == "1" else 1)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.integers(0, len(SEEDS) - 1), OPERATIONS)
def test_the_header_parse_returns_a_header_or_a_header_error(number: int, operations) -> None:
    seed = seeds()[number]
    _parse(seed, mutate(seed, operations))


@settings(max_examples=EXAMPLES // 2, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(SEEDS) - 1), st.binary(max_size=4096))
def test_random_bytes_after_a_real_header_are_refused_or_read(number: int, tail: bytes) -> None:
    seed = seeds()[number]
    cut = len(seed.instance.dataset) // 2
    _parse(seed, seed.instance.dataset[:cut] + tail)


def test_declared_lengths_of_4_gib_allocate_nothing_for_them() -> None:
    """Every element's length set to each huge value in turn, in every seed."""
    for seed in seeds():
        for number in range(len(seed.length_fields)):
            for huge in (0x7FFFFFFF, 0xFFFFFFF0, 0xFFFFFFFE):
                _parse(seed, mutate(seed, [(4, number, bytes(LENGTHS.index(huge)))]))


def test_mutated_datasets_sent_as_raw_c_stores_are_each_answered(tmp_path: Path) -> None:
    rng = random.Random(16)
    instances = []
    for number in range(60):
        seed = seeds()[number % len(SEEDS)]
        operations = [
            (rng.randrange(5), rng.randrange(1 << 20), rng.randbytes(rng.randrange(17)))
            for _ in range(rng.randint(1, 4))
        ]
        instances.append(
            RawInstance(
                seed.instance.source,
                seed.instance.sop_class_uid,
                seed.instance.sop_instance_uid,
                seed.instance.transfer_syntax_uid,
                mutate(seed, operations),
            )
        )
    with running_node(tmp_path / "node") as node:
        statuses = raw_store(node.port, instances, tmp_path / "wire")
        alive = node.process.poll() is None
        echo = raw_store(node.port, [seeds()[0].instance], tmp_path / "after")
    assert None not in statuses, statuses
    assert alive
    assert echo == [0x0000], echo
    refused = sum(status != 0 for status in statuses)
    print(f"{len(statuses)} mutated datasets: {refused} refused, {len(statuses) - refused} stored")
