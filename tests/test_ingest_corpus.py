"""The shared corpus through the node: every sendable file stored as sent; bad input answered.

Acceptance 1 (DCMTK storescu sends every folder; stored datasets equal what was sent) and
acceptance 5 (every file of malformed-and-edge/ gets a status and the node keeps serving).
"""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.filereader import read_file_meta_info

from tests.ingest_support import DCMTK_ENV, dcmtk_store, raw_instance, raw_store, running_node

#: DICOMDIR files: media directories, not instances; storescu does not send them.
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
#: Transfer syntaxes DCMTK 3.6.7 does not know (it cannot read or propose them).
DCMTK_UNKNOWN_SYNTAXES = {
    "1.2.840.10008.1.2.4.201",  # HTJ2K lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
}


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


def _assert_same_dataset(stored: Path, sent: Path) -> None:
    """Element by element (pixel data bytes included), the File Meta aside."""
    ours, theirs = dcmread(stored), dcmread(sent)
    ours_tags = {tag for tag in ours if tag.group != 0x0002}
    their_tags = {tag for tag in theirs if tag.group != 0x0002}
    assert ours_tags == their_tags, f"{sent}: element sets differ: {ours_tags ^ their_tags}"
    for tag in sorted(their_tags):
        assert ours[tag] == theirs[tag], f"{sent}: element {tag} differs"
    assert ours.file_meta.TransferSyntaxUID == theirs.file_meta.TransferSyntaxUID


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

    # Files DCMTK did not send must be ones it cannot: no usable File Meta, or a syntax
    # it does not know. Anything else would hide a negotiation problem on our side.
    unsent = [o.path for o in outcomes if o.response is None]
    for path in unsent:
        meta = _meta(path)
        assert (
            meta is None
            or meta[0] == MEDIA_STORAGE_DIRECTORY
            or meta[1] in DCMTK_UNKNOWN_SYNTAXES
        ), f"DCMTK did not send {path}"
    sent = [o.path for o in outcomes if o.succeeded]
    assert len(sent) > 500

    # The last file sent with a given SOP Instance UID is the one the spool must hold.
    last_by_uid = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in sent}
    conn = sqlite3.connect(node.database)
    rows = {
        row[0]: row[1:]
        for row in conn.execute(
            "SELECT sop_instance_uid, path, sop_class_uid, transfer_syntax_uid FROM instances"
        )
    }
    assert set(rows) == set(last_by_uid)
    for uid, source in last_by_uid.items():
        path, sop_class, syntax = rows[uid]
        assert (sop_class, syntax) == _meta(source), source
        _assert_same_dataset(node.spool / path, source)
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
            capture_output=True, env=DCMTK_ENV, timeout=30, check=False,
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

    conn = sqlite3.connect(node.database)
    rows = conn.execute("SELECT sop_instance_uid, path FROM instances")
    indexed = {uid: path for uid, path in rows}
    stored_files = {p.relative_to(node.spool).as_posix() for p in node.spool.rglob("*.dcm")}
    assert stored_files == set(indexed.values()), "spool and index disagree"
    assert not list((node.spool / ".incoming").iterdir()), "a temp file was left behind"
    for item, status in zip(instances, statuses, strict=True):
        if status == 0x0000:
            assert item.sop_instance_uid in indexed, item.source
        else:
            assert status >> 12 in (0xA, 0xC), f"{item.source.name}: 0x{status:04X}"
    failed = sum(1 for s in statuses if s != 0)
    assert failed and failed < len(statuses)
    assert "refused" in log and "from RAWSENDER" in log
