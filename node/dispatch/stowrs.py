"""The STOW-RS transport: result files POSTed to a DICOMweb server as multipart/related.

Like the other transports it answers per row and never raises or retries; the destination's
sender owns backoff and dead letters. Each request carries the files as stored (Part 10), at
most ``max_batch_mb`` of them (a single larger file goes alone). The answer is read as the
standard says: 200 all stored, 202 some stored (the body's FailedSOPSequence names the
others), 409 none stored; any other status, a redirect included (a POST must not be turned
into a GET that "succeeds"), fails the whole request with the status and a short excerpt.

``http.client`` rather than ``urllib.request``: urllib follows a 302 by sending a GET.
The token is read at send time, so it can be rotated without a restart, and it never
appears in a reason or a log line.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import ssl
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from node.destination_settings import StowRsDestination

__all__ = ["StowRsTransport", "stow_outcome"]

LOG = logging.getLogger(__name__)

REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
EXCERPT_CHARS = 200


class StowPart(Protocol):
    """One instance to store: a key for the answer, its SOP Instance UID and its file (an
    ``OutboxRow`` is one; so is a vendor's series file)."""

    @property
    def id(self) -> int: ...

    @property
    def sop_instance_uid(self) -> str: ...

    @property
    def path(self) -> Path: ...


@dataclass(frozen=True)
class SeriesFile:
    """A file to store that is not an outbox row (a series sent to a vendor's node)."""

    id: int
    sop_instance_uid: str
    path: Path


class StowRsTransport:
    """STOW-RS client for one DICOMweb endpoint, optionally with a bearer token."""

    def __init__(self, destination: StowRsDestination) -> None:
        self.destination = destination
        self._url = urlsplit(destination.url)

    def deliver(self, rows: Sequence[StowPart]) -> dict[int, str | None]:
        outcome: dict[int, str | None] = {}
        try:
            authorization = self._authorization()
        except ValueError as exc:
            return {row.id: str(exc) for row in rows}
        for batch in self._batches(rows, outcome):
            outcome.update(self._post(batch, authorization))
        return outcome

    def _authorization(self) -> str | None:
        dest = self.destination
        if dest.token_file is not None:
            try:
                token = dest.token_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ValueError(f"cannot read token_file {dest.token_file}: {exc}") from exc
            if not token:
                raise ValueError(f"token_file {dest.token_file} is empty")
        elif dest.token_env is not None:
            token = os.environ.get(dest.token_env, "").strip()
            if not token:
                raise ValueError(f"environment variable {dest.token_env} is unset or empty")
        else:
            return None
        return f"Bearer {token}"

    def _batches(
        self, rows: Sequence[StowPart], outcome: dict[int, str | None]
    ) -> Iterator[list[tuple[StowPart, bytes]]]:
        """Rows with their bytes, grouped under the size cap; unreadable files fail here."""
        cap = self.destination.max_batch_mb * 1024 * 1024
        batch: list[tuple[StowPart, bytes]] = []
        size = 0
        for row in rows:
            try:
                data = row.path.read_bytes()
            except OSError as exc:
                outcome[row.id] = f"cannot read result file {row.path}: {exc}"
                continue
            if batch and size + len(data) > cap:
                yield batch
                batch, size = [], 0
            batch.append((row, data))
            size += len(data)
        if batch:
            yield batch

    def _post(
        self, batch: list[tuple[StowPart, bytes]], authorization: str | None
    ) -> dict[int, str | None]:
        rows = [row for row, _ in batch]
        boundary = uuid.uuid4().hex
        while any(boundary.encode() in data for _, data in batch):
            boundary = uuid.uuid4().hex
        body = _multipart(boundary, [data for _, data in batch])
        headers = {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
            "Content-Length": str(len(body)),
        }
        if authorization is not None:
            headers["Authorization"] = authorization
        url = self.destination.url
        connection = self._connection()
        try:
            path = self._url.path or "/"
            if self._url.query:
                path += f"?{self._url.query}"
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            status, answer = response.status, response.read()
        except (OSError, http.client.HTTPException) as exc:
            reason = f"STOW-RS to {url} failed: {type(exc).__name__}: {exc}"
            return {row.id: reason for row in rows}
        finally:
            connection.close()
        outcome = stow_outcome(status, answer, rows)
        stored = sum(1 for reason in outcome.values() if reason is None)
        LOG.debug("STOW-RS to %s: HTTP %d, %d of %d stored", url, status, stored, len(rows))
        return outcome

    def _connection(self) -> http.client.HTTPConnection:
        dest, url = self.destination, self._url
        if url.scheme == "http":
            return http.client.HTTPConnection(url.hostname, url.port, timeout=dest.timeout_s)
        context = ssl.create_default_context(
            cafile=str(dest.ca_file) if dest.ca_file is not None else None
        )
        if not dest.verify_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return http.client.HTTPSConnection(
            url.hostname, url.port, timeout=dest.timeout_s, context=context
        )


def _multipart(boundary: str, parts: Sequence[bytes]) -> bytes:
    chunks: list[bytes] = []
    for data in parts:
        chunks += [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode(), data]
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks)


def stow_outcome(status: int, answer: bytes, rows: Sequence[StowPart]) -> dict[int, str | None]:
    """Each row's outcome from a STOW-RS response, by its SOP Instance UID."""
    if status not in (200, 202, 409):
        text = " ".join(answer[:EXCERPT_CHARS].decode("utf-8", "replace").split())
        reason = f"STOW-RS answered HTTP {status}" + (f": {text}" if text else "")
        return {row.id: reason for row in rows}
    stored, failed = _parse_answer(answer)
    outcome: dict[int, str | None] = {}
    for row in rows:
        uid = row.sop_instance_uid
        if uid in failed:
            code = failed[uid]
            outcome[row.id] = (
                "STOW-RS failed this instance without a reason"
                if code is None
                else f"STOW-RS failure reason 0x{code:04X}"
            )
        elif status == 200 or uid in stored:
            outcome[row.id] = None
        else:
            outcome[row.id] = f"STOW-RS answered HTTP {status} without storing this instance"
    return outcome


def _parse_answer(answer: bytes) -> tuple[set[str], dict[str, int | None]]:
    """The stored UIDs and the failed UIDs with their FailureReason, from DICOM JSON; an
    unreadable body names none (then the status decides)."""
    try:
        document = json.loads(answer) if answer.strip() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        return set(), {}
    if isinstance(document, list):  # some servers wrap the one dataset in an array
        document = document[0] if document else {}
    if not isinstance(document, dict):
        return set(), {}
    stored = {uid for uid, _ in _items(document, REFERENCED_SOP_SEQUENCE)}
    failed = dict(_items(document, FAILED_SOP_SEQUENCE))
    return stored, failed


def _items(document: dict, sequence: str) -> Iterator[tuple[str, int | None]]:
    element = document.get(sequence)
    items = element.get("Value", []) if isinstance(element, dict) else []
    for item in items if isinstance(items, list) else []:
        uid = _first(item, REFERENCED_SOP_INSTANCE_UID)
        if isinstance(uid, str):
            reason = _first(item, FAILURE_REASON)
            yield uid, reason if isinstance(reason, int) else None


def _first(item: object, tag: str) -> object:
    element = item.get(tag) if isinstance(item, dict) else None
    values = element.get("Value") if isinstance(element, dict) else None
    return values[0] if isinstance(values, list) and values else None
