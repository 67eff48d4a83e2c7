"""C-STORE and C-ECHO responses encoded by hand instead of through pydicom.

pynetdicom turns every response primitive into a pydicom ``Dataset``, encodes it twice (once
to learn the group length) and wraps it in a P-DATA primitive: about half a millisecond of
CPU per instance, more than DCMTK spends on a whole small C-STORE. A response command set is
a handful of fixed elements (PS3.7 9.3.1.2 and 9.3.5.2), always Implicit VR Little Endian, so
``FastResponseDIMSE`` writes those bytes itself. Anything it does not cover (an Offending
Element, non-ASCII text, a PDU limit smaller than the message, a handler bound to
``EVT_DIMSE_SENT``, any other message) goes through pynetdicom's own ``send_msg``.
"""

from __future__ import annotations

import struct
from typing import Any

from pynetdicom import evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.pdu_primitives import P_DATA

#: Command Field of the responses covered here (PS3.7 E.1).
STORE_RESPONSE = 0x8001
_COMMAND_FIELDS = {C_STORE: STORE_RESPONSE, C_ECHO: 0x8030}
#: Command Data Set Type of a message without a data set (PS3.7 E.1).
NO_DATASET = 0x0101
#: Message Control Header of a PDV holding a whole command set: command, last fragment.
_LAST_COMMAND_FRAGMENT = b"\x03"


def _element(element: int, value: bytes) -> bytes:
    """One Implicit VR Little Endian element of group 0000."""
    return struct.pack("<HHL", 0x0000, element, len(value)) + value


def _uid(value: str) -> bytes:
    data = value.encode("ascii")
    return data + b"\x00" if len(data) % 2 else data


def _text(value: str) -> bytes:
    data = value.encode("ascii")
    return data + b" " if len(data) % 2 else data


def _us(value: int) -> bytes:
    return struct.pack("<H", value)


def encode_response(primitive: C_STORE | C_ECHO) -> bytes | None:
    """The command set of a C-STORE or C-ECHO response, or None if this encoder does not
    cover it (pynetdicom's encoder then does)."""
    command_field = _COMMAND_FIELDS.get(type(primitive))
    if command_field is None or primitive.MessageIDBeingRespondedTo is None:
        return None
    if primitive.Status is None or getattr(primitive, "OffendingElement", None) is not None:
        return None
    return encode_response_fields(
        command_field,
        primitive.MessageIDBeingRespondedTo,
        primitive.Status,
        sop_class_uid=primitive.AffectedSOPClassUID,
        sop_instance_uid=getattr(primitive, "AffectedSOPInstanceUID", None),
        error_comment=primitive.ErrorComment,
    )


def encode_response_fields(
    command_field: int,
    message_id: int,
    status: int,
    *,
    sop_class_uid: str | None,
    sop_instance_uid: str | None,
    error_comment: str | None,
) -> bytes | None:
    """A response command set from its fields, in the element order pynetdicom writes; None
    for what this encoder does not cover (non-ASCII text, values out of range)."""
    try:
        elements = []
        if sop_class_uid is not None:
            elements.append(_element(0x0002, _uid(sop_class_uid)))
        elements += [
            _element(0x0100, _us(command_field)),
            _element(0x0120, _us(message_id)),
            _element(0x0800, _us(NO_DATASET)),
            _element(0x0900, _us(status)),
        ]
        if error_comment is not None:
            elements.append(_element(0x0902, _text(error_comment)))
        if sop_instance_uid is not None:
            elements.append(_element(0x1000, _uid(sop_instance_uid)))
    except (UnicodeEncodeError, struct.error):
        return None
    body = b"".join(elements)
    return _element(0x0000, struct.pack("<L", len(body))) + body


def fits_one_pdu(command_set: bytes, maximum_pdu_size: int) -> bool:
    """Whether a command set goes as one PDV under the peer's maximum PDU length (0: none)."""
    return not maximum_pdu_size or len(command_set) + 6 <= maximum_pdu_size


def encode_command_pdu(context_id: int, command_set: bytes) -> bytes:
    """A P-DATA-TF PDU carrying one whole command set in one PDV (PS3.8 9.3.5)."""
    item_length = 2 + len(command_set)
    return (
        struct.pack(">BBLLB", 0x04, 0x00, 4 + item_length, item_length, context_id)
        + _LAST_COMMAND_FRAGMENT
        + command_set
    )


class FastResponseDIMSE(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider, with C-STORE/C-ECHO responses from ``encode_response``."""

    def send_msg(self, primitive: Any, context_id: int) -> None:
        command_set = None
        if not self.assoc.get_handlers(evt.EVT_DIMSE_SENT):
            command_set = encode_response(primitive)
        if command_set is None or not fits_one_pdu(command_set, self.maximum_pdu_size):
            super().send_msg(primitive, context_id)
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list.append(
            (context_id, _LAST_COMMAND_FRAGMENT + command_set)
        )
        self.dul.send_pdu(pdata)
