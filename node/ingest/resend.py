"""Re-sends of what the node already holds: an instance byte for byte, or its own results.

A PACS re-sends whole studies as a matter of routine, and with them the AI results the node
sent it. Neither changes the study, so neither may re-open it: a new version would run the
job again and send its results again. Only an instance whose spool file already exists is
compared (one ``stat`` on the normal path), and the size is checked before any byte is read;
only an instance of a result SOP class is looked up among the node's results.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from node.ingest.header import InstanceHeader
from node.ingest.index import Index
from node.ingest.spool import Spool, instance_relpath
from node.shared_types import KIND_BY_SOP_CLASS

#: Preamble, ``DICM`` and the File Meta group length element (tag, VR, length, value).
_META_LENGTH_AT = 128 + 4 + 8
_META_START = _META_LENGTH_AT + 4


def same_dataset(spool_file: Path, dataset: bytes | memoryview) -> bool:
    """Whether ``spool_file`` holds ``dataset`` (as received: no File Meta) after its meta.

    The File Meta is left out of the comparison: it names the sending AE, which may differ
    for the same instance. False for a missing or unreadable file (then it is stored anew).
    """
    try:
        with spool_file.open("rb") as stored:
            size = os.fstat(stored.fileno()).st_size
            if size < _META_START + len(dataset):
                return False
            head = stored.read(_META_START)
            if head[128:132] != b"DICM":
                return False
            (meta_length,) = struct.unpack("<L", head[_META_LENGTH_AT:_META_START])
            if size != _META_START + meta_length + len(dataset):
                return False
            stored.seek(_META_START + meta_length)
            return stored.read() == dataset
    except OSError:
        return False


def _spool_relpath(header: InstanceHeader) -> str:
    """Where the spool keeps this instance (relative to its folder)."""
    return instance_relpath(
        header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid
    )


def already_held(
    index: Index,
    spool: Spool,
    header: InstanceHeader,
    dataset: bytes | memoryview,
    transfer_syntax: str,
) -> str | None:
    """What a received instance is, if the node holds it already: one of its own results sent
    back, or byte for byte the indexed instance (whose committed row and fsynced spool file
    already keep the Success promise). None: store it as usual."""
    if header.sop_class_uid in KIND_BY_SOP_CLASS and index.is_result(header.sop_instance_uid):
        return "one of the node's results"
    relpath = _spool_relpath(header)
    if not spool.path(relpath).exists():
        return None  # the normal path: a new instance
    indexed = index.indexed_copy(header.sop_instance_uid)
    if indexed == (relpath, transfer_syntax) and same_dataset(spool.path(relpath), dataset):
        return "a re-send of the stored instance"
    return None
