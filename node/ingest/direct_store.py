"""C-STORE requests read straight off their P-DATA PDUs and answered on the socket.

pynetdicom turns every received PDU into PDU and PDV objects, copies each dataset fragment
into a BytesIO, decodes the command set with pydicom, builds a C-STORE primitive, runs its
storage service class and an event, then encodes the response through pydicom again: for a
525 kB CT slice in 128 KiB PDUs that is four copies of the dataset and most of a
millisecond of Python per instance, more than DCMTK's ``storescp`` spends on the whole
instance. For the one message a storage node receives by the thousand, the DUL thread does
the work here instead: the command set (a few elements of group 0000, always Implicit VR
Little Endian) is decoded by hand, the dataset fragments are kept as views on the PDUs they
arrived in, the store handler is called, and the response leaves as one hand-encoded PDU.

Only a whole C-STORE-RQ command in one PDV, with plain UIDs, on an accepted presentation
context of an established association with nothing else in progress, takes this path. A
command split over PDVs, any other DIMSE message, a message pynetdicom already holds part of,
a release under way: all of that is left to pynetdicom, as before.
"""

from __future__ import annotations

import re
import struct
import threading
from dataclasses import dataclass, field

from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE

from node.ingest.c_store import StoreHandler, StoreReply, StoreRequest
from node.ingest.responses import (
    NO_DATASET,
    STORE_RESPONSE,
    encode_command_pdu,
    encode_response_fields,
    fits_one_pdu,
)
from node.pynetdicom_seam import accepted_context, is_killed, release_sent

#: Command Field of a C-STORE request (PS3.7 E.1).
STORE_REQUEST = 0x0001
#: Message Control Header bits (PS3.8 E.2).
_COMMAND_BIT = 0x01
_LAST_BIT = 0x02
_PDV_HEADER = struct.Struct(">LBB")
_ELEMENT_HEADER = struct.Struct("<HHL")
_US = struct.Struct("<H")
#: UIDs this path passes on; anything else (odd characters, too long) goes to pynetdicom.
_PLAIN_UID = re.compile(rb"[0-9.]{1,64}")


class ProtocolError(Exception):
    """A PDU that breaks the C-STORE message this path is receiving (the association is
    then aborted)."""


@dataclass(frozen=True)
class StoreCommand:
    """The fields of a C-STORE-RQ command set this path needs."""

    message_id: int
    sop_class_uid: str
    sop_instance_uid: str


def decode_store_command(command: bytes | memoryview) -> StoreCommand | None:
    """The C-STORE-RQ in an Implicit VR Little Endian command set; None for any other
    command, a command without a dataset, or anything malformed or unusual."""
    values: dict[int, bytes] = {}
    offset, end = 0, len(command)
    while offset < end:
        if offset + _ELEMENT_HEADER.size > end:
            return None
        group, element, length = _ELEMENT_HEADER.unpack_from(command, offset)
        offset += _ELEMENT_HEADER.size
        if group != 0x0000 or offset + length > end:
            return None
        values[element] = bytes(command[offset : offset + length])
        offset += length
    try:
        if _us(values[0x0100]) != STORE_REQUEST or _us(values[0x0800]) == NO_DATASET:
            return None
        _us(values[0x0700])  # Priority: required, its value does not matter here
        message_id = _us(values[0x0110])
        sop_class_uid = _plain_uid(values[0x0002])
        sop_instance_uid = _plain_uid(values[0x1000])
    except (KeyError, struct.error):
        return None
    if sop_class_uid is None or sop_instance_uid is None:
        return None
    return StoreCommand(message_id, sop_class_uid, sop_instance_uid)


def _us(value: bytes) -> int:
    return int(_US.unpack(value)[0])


def _plain_uid(value: bytes) -> str | None:
    uid = value.rstrip(b"\x00 ")
    return uid.decode("ascii") if _PLAIN_UID.fullmatch(uid) else None


def _pdv_items(body: bytearray) -> list[tuple[int, int, memoryview]] | None:
    """(context ID, message control header, data) of each PDV of a P-DATA-TF PDU body;
    None if the items do not tile the body exactly."""
    items = []
    view = memoryview(body)
    offset, end = 0, len(body)
    while offset < end:
        if offset + _PDV_HEADER.size > end:
            return None
        length, context_id, control = _PDV_HEADER.unpack_from(body, offset)
        start, offset = offset + _PDV_HEADER.size, offset + 4 + length
        if length < 2 or offset > end:
            return None
        items.append((context_id, control, view[start:offset]))
    return items


@dataclass
class _Receiving:
    """A C-STORE whose command has arrived and whose dataset is arriving."""

    context_id: int
    command: StoreCommand
    fragments: list[memoryview] = field(default_factory=list)


class DirectStoreReceiver:
    """Takes the P-DATA PDUs of plain C-STORE requests off pynetdicom's path.

    Used by the DUL thread only. From the command until the response is sent it holds the
    association's ``serving`` lock, so the association thread cannot serve anything beside
    it, and pynetdicom sees none of the message's PDUs.
    """

    def __init__(self, assoc: Association, serving: threading.Lock, handler: StoreHandler) -> None:
        self._assoc = assoc
        #: The association's lock on serving a request (``EventAssociation.serving``).
        self._serving = serving
        self._handler = handler
        self._receiving: _Receiving | None = None

    def take(self, body: bytearray, *, may_start: bool = True) -> bool:
        """Keep (and, at its last fragment, serve) this P-DATA-TF PDU body if it belongs to a
        C-STORE this path receives; False leaves the PDU to pynetdicom. ``may_start`` False:
        only a dataset already being received is continued.

        Raises ``ProtocolError`` for a PDU that does not continue the dataset being received.
        """
        items = _pdv_items(body)
        receiving = self._receiving
        if receiving is None:
            receiving = self._start(items) if may_start else None
            if receiving is None:
                return False
            assert items is not None
            items = items[1:]
        elif items is None:
            raise ProtocolError("malformed P-DATA-TF PDU inside a C-STORE dataset")
        for position, (context_id, control, data) in enumerate(items, start=1):
            if control & _COMMAND_BIT or context_id != receiving.context_id:
                raise ProtocolError(
                    f"P-DATA for context {context_id} (control 0x{control:02X}) inside the "
                    f"dataset of a C-STORE on context {receiving.context_id}"
                )
            receiving.fragments.append(data)
            if control & _LAST_BIT:
                if position != len(items):
                    raise ProtocolError("P-DATA after the last fragment of a C-STORE dataset")
                self._finish(receiving)
        return True

    def close(self) -> None:
        """Drop a dataset left half-received as the association ends (released, aborted, timed
        out or the connection lost) and free ``serving``."""
        if self._receiving is not None:
            self._receiving = None
            self._serving.release()

    def _start(self, items: list[tuple[int, int, memoryview]] | None) -> _Receiving | None:
        """The C-STORE whose command opens this PDU, if this path may take it."""
        if not items:
            return None
        context_id, control, command_set = items[0]
        if control != _COMMAND_BIT | _LAST_BIT:
            return None
        assoc = self._assoc
        if (
            not assoc.is_established
            or release_sent(assoc)
            or is_killed(assoc)
            or accepted_context(assoc, context_id) is None
            or assoc.dimse.message is not None
            or not assoc.dimse.msg_queue.empty()
        ):
            return None
        command = decode_store_command(command_set)
        if command is None or not self._serving.acquire(blocking=False):
            return None
        self._receiving = _Receiving(context_id, command)
        return self._receiving

    def _finish(self, receiving: _Receiving) -> None:
        self._receiving = None
        assoc = self._assoc
        try:
            fragments = receiving.fragments
            command = receiving.command
            context = accepted_context(assoc, receiving.context_id)
            assert context is not None  # checked as the command arrived; never withdrawn
            request = StoreRequest(
                context_id=receiving.context_id,
                transfer_syntax=str(context.transfer_syntax[0]),
                message_id=command.message_id,
                sop_class_uid=command.sop_class_uid,
                sop_instance_uid=command.sop_instance_uid,
                dataset=fragments[0].tobytes() if len(fragments) == 1 else b"".join(fragments),
            )
            fragments.clear()  # the PDU buffers go as soon as the dataset is one piece
            reply = self._handler(assoc, request)
            self._respond(request, reply)
        finally:
            self._serving.release()

    def _respond(self, request: StoreRequest, reply: StoreReply) -> None:
        """One P-DATA PDU straight to the socket, or pynetdicom's encoder and queue when the
        response does not fit the peer's PDU limit, is not plain ASCII, or would overtake
        something already queued for sending."""
        assoc = self._assoc
        command_set = encode_response_fields(
            STORE_RESPONSE,
            request.message_id,
            reply.status,
            sop_class_uid=request.sop_class_uid,
            sop_instance_uid=request.sop_instance_uid,
            error_comment=reply.error_comment,
        )
        if (
            command_set is None
            or not fits_one_pdu(command_set, assoc.dimse.maximum_pdu_size)
            or not assoc.dul.to_provider_queue.empty()
        ):
            response = C_STORE()
            response.MessageIDBeingRespondedTo = request.message_id
            response.AffectedSOPClassUID = request.sop_class_uid
            response.AffectedSOPInstanceUID = request.sop_instance_uid
            response.Status = reply.status
            response.ErrorComment = reply.error_comment
            assoc.dimse.send_msg(response, request.context_id)
            return
        assoc.dul.socket.send(encode_command_pdu(request.context_id, command_set))
