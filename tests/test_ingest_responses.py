"""The hand-encoded C-STORE/C-ECHO responses are byte for byte what pynetdicom would send."""

from __future__ import annotations

import pytest
from pydicom.uid import CTImageStorage
from pynetdicom.dimse_messages import C_ECHO_RSP, C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.sop_class import Verification

from node.ingest.responses import encode_response


def _pynetdicom_bytes(primitive: C_STORE | C_ECHO) -> bytes:
    message = C_STORE_RSP() if isinstance(primitive, C_STORE) else C_ECHO_RSP()
    message.primitive_to_message(primitive)
    (pdata,) = message.encode_msg(1, 0)
    ((_context_id, pdv),) = pdata.presentation_data_value_list
    assert pdv[:1] == b"\x03"
    return pdv[1:]


def _store_response(**fields: object) -> C_STORE:
    primitive = C_STORE()
    primitive.MessageID = 7  # pynetdicom's storage SCP sets it; responses do not carry it
    primitive.MessageIDBeingRespondedTo = 7
    primitive.AffectedSOPClassUID = CTImageStorage
    for name, value in fields.items():
        setattr(primitive, name, value)
    return primitive


@pytest.mark.parametrize(
    "fields",
    [
        {"Status": 0x0000, "AffectedSOPInstanceUID": "1.2.3.4"},  # even-length UID
        {"Status": 0x0000, "AffectedSOPInstanceUID": "1.2.3.45"},  # odd-length UID
        {"Status": 0xA700, "AffectedSOPInstanceUID": "1.2.3", "ErrorComment": "out of room"},
        {"Status": 0xC000, "ErrorComment": "unreadable dataset: odd"},  # no instance UID
        {"Status": 0xFFFF, "MessageIDBeingRespondedTo": 65535},
    ],
)
def test_store_response_matches_pynetdicom(fields: dict[str, object]) -> None:
    primitive = _store_response(**fields)
    assert encode_response(primitive) == _pynetdicom_bytes(primitive)


@pytest.mark.parametrize("comment", [None, "busy"])
def test_echo_response_matches_pynetdicom(comment: str | None) -> None:
    primitive = C_ECHO()
    primitive.MessageIDBeingRespondedTo = 1
    primitive.AffectedSOPClassUID = Verification
    primitive.Status = 0x0000
    primitive.ErrorComment = comment
    assert encode_response(primitive) == _pynetdicom_bytes(primitive)


def test_what_it_does_not_cover_is_left_to_pynetdicom() -> None:
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = CTImageStorage
    assert encode_response(request) is None  # a request, not a response
    offending = _store_response(Status=0xA900, OffendingElement=[0x00080018])
    assert encode_response(offending) is None
    no_status = _store_response(AffectedSOPInstanceUID="1.2.3")
    assert encode_response(no_status) is None
