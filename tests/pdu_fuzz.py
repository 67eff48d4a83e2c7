"""Hostile upper-layer PDUs for the fuzz tests, each case drawn from a seeded generator.

A case is what one connection sends: mutated A-ASSOCIATE-RQs (item lengths and types,
bytes, truncation, extension, the PDU length), random and unknown PDUs, PDUs whose declared
length is cut short or huge, and, inside an association the node accepted, P-DATA-TF PDUs
whose PDV lengths, context ids and control headers are wrong. ``case(seed, number)`` is the
same case every time, so a failure names what to replay.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from functools import cache

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import CTImageStorage, generate_uid
from pynetdicom.sop_class import Verification

from tests.hostile_support import (
    CT_EXPLICIT_CONTEXT,
    CT_IMPLICIT_CONTEXT,
    ECHO_CONTEXT,
    PDU_HEADER,
    associate_rq,
    release_rq,
)

#: Bytes of an A-ASSOCIATE-RQ before its variable items (PDU header + fixed fields).
_ASSOCIATE_FIXED = 74
_ITEM_TYPES = (0x10, 0x20, 0x21, 0x30, 0x40, 0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58)
_PDU_TYPES = (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07)


class CaseKind(Enum):
    """What a case attacks."""

    ASSOCIATE_RQ = "mutated A-ASSOCIATE-RQ"
    RANDOM_PDU = "random or unknown PDU"
    DECLARED_LENGTH = "declared PDU length cut short or huge"
    P_DATA = "P-DATA-TF with wrong PDVs in an association"


@dataclass(frozen=True)
class FuzzCase:
    """What one connection sends; ``associate`` first negotiates a valid association."""

    number: int
    kind: CaseKind
    associate: bool
    chunks: tuple[bytes, ...]
    #: Half-close after sending (the node sees the end); False leaves the node's request
    #: timeout to cut the connection (only before an association).
    half_close: bool = True


def case(seed: int, number: int) -> FuzzCase:
    """The ``number``-th case of the run seeded ``seed``."""
    rng = random.Random(f"{seed}:{number}")
    kind = rng.choices(list(CaseKind), weights=(45, 15, 10, 30))[0]
    if kind is CaseKind.ASSOCIATE_RQ:
        return FuzzCase(number, kind, False, (_mutated_associate_rq(rng),), rng.random() > 0.02)
    if kind is CaseKind.RANDOM_PDU:
        return FuzzCase(number, kind, rng.random() < 0.3, _random_pdus(rng))
    if kind is CaseKind.DECLARED_LENGTH:
        return FuzzCase(number, kind, False, (_wrong_declared_length(rng),), rng.random() > 0.05)
    chunks = tuple(_p_data(rng) for _ in range(rng.randint(1, 3)))
    if rng.random() < 0.3:
        chunks += (release_rq(),)
    return FuzzCase(number, kind, True, chunks)


def _items(pdu: bytes) -> list[int]:
    """Offsets of the variable items and sub-items of an A-ASSOCIATE-RQ/AC."""
    offsets = []

    def walk(start: int, end: int, nested: bool) -> None:
        offset = start
        while offset + 4 <= min(end, len(pdu)):
            offsets.append(offset)
            item_type = pdu[offset]
            length = struct.unpack_from(">H", pdu, offset + 2)[0]
            if nested and item_type == 0x20:
                walk(offset + 8, offset + 4 + length, False)
            elif nested and item_type == 0x50:
                walk(offset + 4, offset + 4 + length, False)
            offset += 4 + length

    walk(_ASSOCIATE_FIXED, len(pdu), True)
    return offsets


def _set_pdu_length(pdu: bytearray, rng: random.Random) -> None:
    body = len(pdu) - 6
    choice = rng.choice(
        (0, 1, body - 1, body + 1, body + rng.randint(2, 5000), 0xFFFFFFFF, rng.getrandbits(32))
    )
    struct.pack_into(">L", pdu, 2, min(max(choice, 0), 0xFFFFFFFF))


def _mutate_associate(pdu: bytearray, rng: random.Random) -> None:
    items = _items(bytes(pdu))
    operation = rng.randrange(9)
    if operation == 0 and items:  # an item's length
        offset = rng.choice(items)
        length = struct.unpack_from(">H", pdu, offset + 2)[0]
        choice = (0, 1, 2, 3, length - 1, length + 1, length + rng.randint(2, 300), 0xFFFF)
        struct.pack_into(">H", pdu, offset + 2, min(max(rng.choice(choice), 0), 0xFFFF))
    elif operation == 1 and items:  # an item's type
        offset = rng.choice(items)
        pdu[offset] = rng.choice(_ITEM_TYPES) if rng.random() < 0.7 else rng.randrange(256)
    elif operation == 2 and pdu:  # bytes
        for _ in range(rng.randint(1, 8)):
            pdu[rng.randrange(len(pdu))] = rng.randrange(256)
    elif operation == 3 and len(pdu) > 1:  # truncate
        del pdu[rng.randrange(1, len(pdu)) :]
    elif operation == 4:  # extend
        pdu += rng.randbytes(rng.randint(1, 600))
    elif operation == 5 and items:  # duplicate an item
        offset = rng.choice(items)
        length = 4 + struct.unpack_from(">H", pdu, offset + 2)[0]
        pdu[offset:offset] = pdu[offset : offset + length] * rng.randint(1, 40)
    elif operation == 6 and items:  # remove an item
        offset = rng.choice(items)
        del pdu[offset : offset + 4 + struct.unpack_from(">H", pdu, offset + 2)[0]]
    elif operation == 7 and len(pdu) >= _ASSOCIATE_FIXED:  # an AE title, the version
        start = rng.choice((6, 10, 26))
        width = 2 if start == 6 else 16
        pdu[start : start + width] = rng.randbytes(width)
    elif len(pdu) >= 6:
        _set_pdu_length(pdu, rng)


def _mutated_associate_rq(rng: random.Random) -> bytes:
    pdu = bytearray(_valid_rq())
    for _ in range(rng.randint(1, 4)):
        _mutate_associate(pdu, rng)
    if len(pdu) >= 6 and rng.random() < 0.7:  # mostly keep the PDU length true, to go deeper
        struct.pack_into(">L", pdu, 2, len(pdu) - 6)
    return bytes(pdu)


def _random_pdus(rng: random.Random) -> tuple[bytes, ...]:
    pdus = []
    for _ in range(rng.randint(1, 3)):
        pdu_type = rng.choice(_PDU_TYPES) if rng.random() < 0.5 else rng.randrange(256)
        body = rng.randbytes(rng.choice((0, 1, 4, 10, 68, rng.randint(0, 400))))
        pdus.append(PDU_HEADER.pack(pdu_type, rng.randrange(256) & 0x01, len(body)) + body)
    return tuple(pdus)


def _wrong_declared_length(rng: random.Random) -> bytes:
    pdu_type = rng.choice(_PDU_TYPES)
    body = _valid_rq()[6:] if pdu_type == 0x01 else rng.randbytes(rng.randint(0, 200))
    body = body[: rng.randint(0, len(body))]
    declared = rng.choice(
        (
            len(body) + rng.randint(1, 100),
            rng.randint(65 * 1024, 1 << 24),
            0x7FFFFFFF,
            0xFFFFFFFF,
        )
    )
    return PDU_HEADER.pack(pdu_type, 0, declared) + body


@cache
def _valid_rq() -> bytes:
    return associate_rq()


def _command(fields: dict[str, object]) -> bytes:
    """A command set, Implicit VR Little Endian, with its group length."""
    ds = Dataset()
    for keyword, value in fields.items():
        setattr(ds, keyword, value)
    body = DicomBytesIO()
    body.is_implicit_VR = True
    body.is_little_endian = True
    write_dataset(body, ds)
    value = body.getvalue()
    return struct.pack("<HHLL", 0, 0, 4, len(value)) + value


@cache
def _echo_command() -> bytes:
    return _command(
        {
            "AffectedSOPClassUID": Verification,
            "CommandField": 0x0030,
            "MessageID": 1,
            "CommandDataSetType": 0x0101,
        }
    )


@cache
def _store_command() -> bytes:
    return _command(
        {
            "AffectedSOPClassUID": CTImageStorage,
            "CommandField": 0x0001,
            "MessageID": 2,
            "Priority": 0,
            "CommandDataSetType": 0x0000,
            "AffectedSOPInstanceUID": generate_uid(),
        }
    )


def _pdv(rng: random.Random, data: bytes, context_id: int, control: int) -> bytes:
    length = len(data) + 2
    if rng.random() < 0.5:
        length = max(
            rng.choice(
                (0, 1, 2, length - 1, length + 1, length + rng.randint(2, 9000), 0xFFFFFFFF)
            ),
            0,
        )
    if rng.random() < 0.2:
        context_id = rng.choice((0, 2, 7, 255, rng.randrange(256)))
    if rng.random() < 0.2:
        control = rng.randrange(256)
    return struct.pack(">LBB", length, context_id, control) + data


def _p_data(rng: random.Random) -> bytes:
    """A P-DATA-TF of one to three PDVs, some of them wrong."""
    makers: tuple[Callable[[], tuple[bytes, int, int]], ...] = (
        lambda: (_echo_command(), ECHO_CONTEXT, 0x03),
        lambda: (_store_command(), CT_EXPLICIT_CONTEXT, 0x03),
        lambda: (_store_command()[: rng.randint(0, 80)], CT_IMPLICIT_CONTEXT, 0x01),
        lambda: (rng.randbytes(rng.randint(0, 300)), CT_EXPLICIT_CONTEXT, 0x02),
        lambda: (rng.randbytes(rng.randint(0, 300)), CT_IMPLICIT_CONTEXT, 0x00),
    )
    pdvs = b"".join(_pdv(rng, *rng.choice(makers)()) for _ in range(rng.randint(1, 3)))
    if rng.random() < 0.3:
        pdvs = pdvs[: rng.randint(0, len(pdvs))]
    length = len(pdvs) if rng.random() < 0.8 else rng.choice((0, len(pdvs) + 7, 0xFFFFFFFF))
    return PDU_HEADER.pack(0x04, 0, length) + pdvs
