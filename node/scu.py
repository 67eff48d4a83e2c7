"""C-ECHO and C-STORE SCU: many files over one association, Nagle off, no lost responses.

pynetdicom 3.0.4's requestor runs its own reactor thread, and ``send_c_store`` "pauses" it
by clearing the reactor's checkpoint event and spinning on a paused flag. The reactor sets
that flag *before* it waits on the checkpoint: if the send clears the checkpoint just after
that wait returned, the send sees the flag still set, sends its request, and the reactor, now
running, takes the C-STORE response off the DIMSE queue as if it were a request and drops
it. ``send_c_store`` then waits out the DIMSE timeout and aborts. With TCP_NODELAY the
response comes back fast enough to hit that window about once in a few thousand stores.
``_ReactorGate`` replaces the checkpoint with one whose ``clear()`` returns only once the
reactor is really parked in ``wait()`` (docs/upstream/README.md has the details and the
patch offered to pynetdicom). On a pynetdicom version ``node.pynetdicom_seam`` does not
know, the gate is left out and ``send_c_store`` is pynetdicom's own.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification

from node.pynetdicom_seam import FAST_PATH, is_killed, replace_reactor_checkpoint, set_option

LOGGER = logging.getLogger(__name__)

# Send files as their bytes (no decode and re-encode); the context must match the file.
set_option("STORE_SEND_CHUNKED_DATASET", True)
set_option("LOG_HANDLER_LEVEL", "none")

#: Media Storage Directory Storage: a DICOMDIR indexes a medium; no SCP stores one.
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
MAX_CONTEXTS = 128  # PS3.8: presentation context IDs are odd numbers 1..255
_PEER = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>\[[^\]]+\]|[^:@]+):(?P<port>\d{1,5})$")


@dataclass(frozen=True)
class Peer:
    """A remote AE: ``AET@HOST:PORT`` on the command line."""

    ae_title: str
    host: str
    port: int

    def __post_init__(self) -> None:
        if not 1 <= len(self.ae_title.strip()) <= 16:
            raise ValueError(f"AE title {self.ae_title!r} must be 1-16 characters")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port {self.port} must be 1-65535")

    @classmethod
    def parse(cls, text: str) -> Peer:
        match = _PEER.match(text.strip())
        if not match:
            raise ValueError(f"{text!r} is not AET@HOST:PORT (e.g. AINODE@127.0.0.1:11112)")
        return cls(match["ae"], match["host"].strip("[]"), int(match["port"]))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.ae_title}@{host}:{self.port}"


class AssociationFailed(ConnectionError):
    """The peer could not be reached or refused the association."""


@dataclass(frozen=True)
class SendFailure:
    path: Path
    reason: str
    status: int | None = None


@dataclass(frozen=True)
class SendReport:
    """What ``send`` did with each file."""

    sent: int
    failed: tuple[SendFailure, ...] = field(default=())
    skipped: tuple[Path, ...] = field(default=())  # DICOMDIR files: media indexes, not objects

    @property
    def ok(self) -> bool:
        return not self.failed


ProgressCallback = Callable[[int, int], None]


class _ReactorGate:
    """Drop-in for the association's reactor checkpoint whose ``clear()`` really pauses.

    ``clear()`` returns only when the reactor thread is parked inside ``wait()`` (or is not
    running, or ``clear()`` is called from the reactor thread itself), so no DIMSE message
    can be taken off the queue by the reactor between the request and its response.
    """

    def __init__(self, assoc: Association) -> None:
        self._assoc = assoc
        self._condition = threading.Condition()
        self._open = True
        self._parked = False

    def is_set(self) -> bool:
        return self._open

    def set(self) -> None:
        with self._condition:
            self._open = True
            self._condition.notify_all()

    def clear(self) -> None:
        with self._condition:
            self._open = False
            if threading.current_thread() is self._assoc:
                return
            while not self._parked and self._assoc.is_alive() and not is_killed(self._assoc):
                self._condition.wait(0.05)

    def wait(self, timeout: float | None = None) -> bool:
        with self._condition:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._open:
                self._parked = True
                self._condition.notify_all()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._condition.wait(remaining)
            self._parked = False
            return self._open


def _set_nodelay(event: evt.Event) -> None:
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def associate(
    peer: Peer,
    contexts: Sequence[PresentationContext],
    calling_ae: str = "AINODE",
    timeout_s: float = 30.0,
    max_pdu: int = 0,
    tls: ssl.SSLContext | None = None,
) -> Association:
    """An established association with Nagle off and the response race fixed (on a
    pynetdicom the seam knows); over DICOM TLS when given a client context (the peer's
    certificate is checked as it says)."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = timeout_s
    ae.dimse_timeout = timeout_s
    ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    assoc = ae.associate(
        peer.host,
        peer.port,
        contexts=list(contexts),
        ae_title=peer.ae_title,
        max_pdu=max_pdu,
        evt_handlers=[(evt.EVT_CONN_OPEN, _set_nodelay)],
        tls_args=None if tls is None else (tls, peer.host),
    )
    if not assoc.is_established:
        if assoc.is_rejected:
            raise AssociationFailed(f"{peer} rejected the association")
        over = " over TLS (is its port TLS, and its certificate trusted?)" if tls else ""
        raise AssociationFailed(f"cannot associate with {peer}{over}")
    if FAST_PATH:
        replace_reactor_checkpoint(assoc, _ReactorGate(assoc))
    return assoc


def echo(
    peer: Peer,
    calling_ae: str = "AINODE",
    timeout_s: float = 30.0,
    tls: ssl.SSLContext | None = None,
) -> int:
    """C-ECHO the peer; return the status (0x0000 is Success)."""
    context = PresentationContext()
    context.abstract_syntax = Verification
    context.transfer_syntax = ["1.2.840.10008.1.2"]
    assoc = associate(peer, [context], calling_ae, timeout_s, tls=tls)
    try:
        status = assoc.send_c_echo()
        if "Status" not in status:
            raise AssociationFailed(f"{peer} sent no C-ECHO response")
        return int(status.Status)
    finally:
        if assoc.is_established:
            assoc.release()


@dataclass(frozen=True)
class _File:
    path: Path
    sop_class_uid: str
    transfer_syntax_uid: str


def _read_meta(path: Path) -> _File:
    meta = read_file_meta_info(path)
    required = ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID")
    missing = [keyword for keyword in required if keyword not in meta]
    if missing:
        raise ValueError(f"file meta lacks {', '.join(missing)}")
    return _File(path, str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))


def _batches(files: Sequence[_File]) -> Iterator[tuple[list[PresentationContext], list[_File]]]:
    """Split files into runs whose (SOP class, transfer syntax) pairs fit one association."""
    pairs: dict[tuple[str, str], None] = {}
    batch: list[_File] = []
    for item in files:
        pair = (item.sop_class_uid, item.transfer_syntax_uid)
        if pair not in pairs and len(pairs) == MAX_CONTEXTS:
            yield _contexts(pairs), batch
            pairs, batch = {}, []
        pairs[pair] = None
        batch.append(item)
    if batch:
        yield _contexts(pairs), batch


def _contexts(pairs: Iterable[tuple[str, str]]) -> list[PresentationContext]:
    contexts = []
    for sop_class, transfer_syntax in pairs:
        context = PresentationContext()
        context.abstract_syntax = sop_class
        context.transfer_syntax = [transfer_syntax]
        contexts.append(context)
    return contexts


def expand_paths(paths: Iterable[Path]) -> list[Path]:
    """Files named, and every file under folders named, in a stable order."""
    found: list[Path] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        else:
            found.append(path)
    return found


def send(
    paths: Iterable[Path],
    peer: Peer,
    calling_ae: str = "AINODE",
    timeout_s: float = 30.0,
    progress: ProgressCallback | None = None,
    tls: ssl.SSLContext | None = None,
) -> SendReport:
    """C-STORE every Part-10 file in ``paths`` (folders are walked) to ``peer``.

    One association carries all files whose contexts fit in 128; more distinct
    (SOP class, transfer syntax) pairs open further associations in turn. Files without
    usable file meta are reported as failed, not sent; DICOMDIR files (a scanner's export
    has them) are skipped.
    """
    files: list[_File] = []
    failures: list[SendFailure] = []
    skipped: list[Path] = []
    all_paths = expand_paths(paths)
    for path in all_paths:
        try:
            meta = _read_meta(path)
        except Exception as exc:
            failures.append(SendFailure(path, f"not a Part-10 file: {exc}"[:200]))
            continue
        if meta.sop_class_uid == MEDIA_STORAGE_DIRECTORY:
            skipped.append(path)
        else:
            files.append(meta)
    total = len(files)
    sent = 0
    done = 0
    for contexts, batch in _batches(files):
        assoc = associate(peer, contexts, calling_ae, timeout_s, tls=tls)
        try:
            for position, item in enumerate(batch):
                if not assoc.is_established:
                    failures.extend(
                        SendFailure(rest.path, "association ended") for rest in batch[position:]
                    )
                    done += len(batch) - position
                    break
                try:
                    status = assoc.send_c_store(item.path)
                except (ValueError, AttributeError, OSError) as exc:
                    failures.append(SendFailure(item.path, str(exc)[:200]))
                else:
                    code = int(status.Status) if "Status" in status else None
                    if code == 0x0000 or (code is not None and code >> 12 == 0xB):
                        sent += 1
                    else:
                        comment = str(status.get("ErrorComment", "") or "")
                        reason = "no response" if code is None else f"status 0x{code:04X}"
                        failures.append(SendFailure(item.path, f"{reason} {comment}".strip(), code))
                done += 1
                if progress is not None:
                    progress(done, total)
        finally:
            if assoc.is_established:
                assoc.release()
    return SendReport(sent=sent, failed=tuple(failures), skipped=tuple(skipped))
