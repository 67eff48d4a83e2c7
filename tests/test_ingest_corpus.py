"""The shared corpus through the node: every sendable file stored as sent; bad input answered.

Acceptance 1 (DCMTK storescu sends every folder; stored datasets equal what was sent) and
acceptance 5 (every file of malformed-and-edge/ gets a status and the node keeps serving).
"""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.filereader import _read_file_meta_info, read_file_meta_info, read_preamble

from node.ingest.header import derived_uid
from tests.conftest import free_port, wait_until
from tests.ingest_support import (
    DCMTK_ENV,
    _listening,
    dcmtk_store,
    raw_instance,
    raw_store,
    running_node,
)

#: DICOMDIR files: media directories, not instances; storescu does not send them.
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
#: Transfer syntaxes DCMTK 3.6.7 does not know (it cannot read or propose them).
DCMTK_UNKNOWN_SYNTAXES = {
    "1.2.840.10008.1.2.4.201",  # HTJ2K lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
}


#: storescu's complaints about a file it cannot read (said before anything goes to the peer).
DCMTK_CANNOT_READ = ("No SOP Class or Instance UID", "unable to convert dataset")


def _corpus_files(corpus: Path, *, malformed: bool) -> list[Path]:
    files = []
    for path in sorted(corpus.rglob("*")):
        if not path.is_file() or path.parent == corpus:
            continue  # CATALOG.md, manifest.tsv
        if path.relative_to(corpus).parts[0] == "malformed-and-edge" and not malformed:
            continue
        files.append(path)
    return files


def _meta(path: Path) -> tuple[str, str] | None:
    try:
        meta = read_file_meta_info(path)
        return str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)
    except Exception:
        return None


def _dataset_bytes(path: Path) -> bytes:
    """A Part-10 file's bytes after its File Meta: the dataset as it went over the wire."""
    with path.open("rb") as handle:
        read_preamble(handle, False)
        _read_file_meta_info(handle)
        return handle.read()


@contextmanager
def _dcmtk_reference_scp(storescp: str, folder: Path, files: list[Path]) -> Iterator[int]:
    """DCMTK storescp in bit-preserving mode: it writes each dataset exactly as received.

    It accepts exactly the (SOP class, transfer syntax) pairs of ``files``, as storescu
    proposes them.
    """
    folder.mkdir(parents=True)
    syntaxes: dict[str, set[str]] = {}
    for path in files:
        if pair := _meta(path):
            syntaxes.setdefault(pair[0], set()).add(pair[1])
    lines = ["[[TransferSyntaxes]]"]
    for number, accepted in enumerate(syntaxes.values(), 1):
        lines.append(f"[TS{number}]")
        lines += [f"TransferSyntax{i} = {ts}" for i, ts in enumerate(sorted(accepted), 1)]
    lines += ["[[PresentationContexts]]", "[Contexts]"]
    for number, sop_class in enumerate(syntaxes, 1):
        lines.append(f"PresentationContext{number} = {sop_class}\\TS{number}")
    lines += ["[[Profiles]]", "[Exact]", "PresentationContexts = Contexts"]
    profile = folder.parent / "storescp.cfg"
    profile.write_text("\n".join(lines) + "\n")
    port = free_port()
    process = subprocess.Popen(
        [storescp, "+B", "-xf", str(profile), "Exact", "-od", str(folder), str(port)],
        env=DCMTK_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: _listening(port), timeout=20, what="storescp to listen")
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.dcmtk
@pytest.mark.corpus
def test_dcmtk_storescu_stores_every_sendable_corpus_file_as_sent(
    tmp_path: Path, corpus: Path, dcmtk
) -> None:
    files = _corpus_files(corpus, malformed=False)
    with running_node(tmp_path / "node") as node:
        outcomes = dcmtk_store(dcmtk("storescu"), files, node.port, tmp_path / "work")
        log = node.log()

    refused = [(o.path, o.response) for o in outcomes if o.response not in (None, "Success")]
    assert not refused, f"the node refused files DCMTK sent: {refused}\n{log[-3000:]}"

    # Files DCMTK did not send must be ones it cannot: no usable File Meta, a DICOMDIR, a
    # syntax it does not know, or a file it says it cannot read. Anything else would hide a
    # negotiation problem on our side.
    unsent = [o for o in outcomes if o.response is None]
    for outcome in unsent:
        meta = _meta(outcome.path)
        assert (
            meta is None
            or meta[0] == MEDIA_STORAGE_DIRECTORY
            or meta[1] in DCMTK_UNKNOWN_SYNTAXES
            or any(reason in (outcome.error or "") for reason in DCMTK_CANNOT_READ)
        ), f"DCMTK did not send {outcome.path}: {outcome.error}"
    assert len(unsent) < 20
    sent = [o.path for o in outcomes if o.succeeded]
    assert len(sent) > 500

    # What storescu put on the wire, captured by DCMTK's own storescp (+B writes the bytes
    # as received; a re-sent UID overwrites, as in our spool): our spool must hold the same
    # dataset bytes for every instance, which is element-by-element equality and more.
    with _dcmtk_reference_scp(dcmtk("storescp"), tmp_path / "reference", files) as port:
        reference = dcmtk_store(dcmtk("storescu"), files, port, tmp_path / "work")
    sent_to_reference = {o.path: o.response for o in reference}
    assert sent_to_reference == {o.path: o.response for o in outcomes}
    conn = sqlite3.connect(node.database)
    rows = {
        row[0]: row[1:]
        for row in conn.execute(
            "SELECT sop_instance_uid, path, sop_class_uid, transfer_syntax_uid FROM instances"
        )
    }
    # A dataset without a SOP Instance UID of its own (the Philips DIRFILEs) goes out under
    # a UID storescu borrows from inside it, a real image's: storescp files it over that
    # image, we file it under a UID derived from the borrowed one, next to the image.
    without_own_uid = [
        p for p in sent if "SOPInstanceUID" not in dcmread(p, stop_before_pixels=True)
    ]
    captured = sorted((tmp_path / "reference").iterdir())
    assert len(rows) == len(captured) + len(without_own_uid)
    for wire_file in captured:
        meta = read_file_meta_info(wire_file)
        wire_uid = str(meta.MediaStorageSOPInstanceUID)
        wire_bytes = _dataset_bytes(wire_file)
        matches = [
            uid
            for uid in (wire_uid, derived_uid("SOPInstanceUID", wire_uid))
            if uid in rows and _dataset_bytes(node.spool / rows[uid][0]) == wire_bytes
        ]
        assert matches, f"{wire_file.name}: no stored file holds the bytes that were sent"
        path, sop_class, syntax = rows[matches[0]]
        assert (sop_class, syntax) == (str(meta.MediaStorageSOPClassUID), meta.TransferSyntaxUID)
        stored = node.spool / path
        assert dcmread(stored) == dcmread(wire_file), f"{wire_file.name}: elements differ"
    assert not list((node.spool / ".incoming").iterdir())
    series_count = conn.execute("SELECT COUNT(DISTINCT series_instance_uid) FROM instances")
    assert series_count.fetchone()[0] == conn.execute("SELECT COUNT(*) FROM series").fetchone()[0]


@pytest.mark.dcmtk
@pytest.mark.corpus
def test_every_malformed_file_gets_an_answer_and_nothing_half_written(
    tmp_path: Path, corpus: Path, dcmtk
) -> None:
    files = _corpus_files(corpus / "malformed-and-edge", malformed=True)
    instances = [raw_instance(path) for path in files]
    assert any("Deeply-Nested" in p.name for p in files)
    with running_node(tmp_path / "node") as node:
        statuses = raw_store(node.port, instances, tmp_path / "wire")
        echo = subprocess.run(
            [dcmtk("echoscu"), "-aec", "AINODE", "127.0.0.1", str(node.port)],
            capture_output=True,
            env=DCMTK_ENV,
            timeout=30,
            check=False,
        )
        log = node.log()

    unanswered = [i.source.name for i, s in zip(instances, statuses, strict=True) if s is None]
    assert not unanswered, f"no response for {unanswered}\n{log[-3000:]}"
    assert echo.returncode == 0, "the node stopped answering C-ECHO after the malformed files"

    by_name = {i.source.name: s for i, s in zip(instances, statuses, strict=True)}
    # Hostile inputs the issue names: answered with a failure status, never a crash.
    nested = next(name for name in by_name if "Deeply-Nested" in name)
    assert by_name[nested] >> 12 == 0xC, f"deeply nested sequence got 0x{by_name[nested]:04X}"
    assert by_name["zipMR.gz"] >> 12 == 0xC
    # Cut inside the pixel data (the header before it is whole): refused, not stored short.
    assert by_name["MR_truncated.dcm"] == 0xC000
    assert by_name["emri_small_jpeg_2k_lossless_too_short.dcm"] == 0xC000

    conn = sqlite3.connect(node.database)
    rows = conn.execute("SELECT sop_instance_uid, path FROM instances")
    indexed = {uid: path for uid, path in rows}
    stored_files = {p.relative_to(node.spool).as_posix() for p in node.spool.rglob("*.dcm")}
    assert stored_files == set(indexed.values()), "spool and index disagree"
    assert not list((node.spool / ".incoming").iterdir()), "a temp file was left behind"
    for item, status in zip(instances, statuses, strict=True):
        if status == 0x0000:
            own_or_derived = {
                item.sop_instance_uid,
                derived_uid("SOPInstanceUID", item.sop_instance_uid),
            }
            assert own_or_derived & set(indexed), item.source
        else:
            assert status >> 12 in (0xA, 0xC), f"{item.source.name}: 0x{status:04X}"
    failed = sum(1 for s in statuses if s != 0)
    assert failed and failed < len(statuses)
    assert "refused" in log and "from RAWSENDER" in log
