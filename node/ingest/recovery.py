"""Start-up after a crash: spool files that missed their index row are indexed.

``recover_spool`` runs unless the last run stopped cleanly (``node.service``) or only the
journal's mover wrote the spool (the journal keeps what it has not filed). With a spool
checkpoint recorded (``node.ingest.checkpoint``) it lists only the series folders written
since; without one, every file of the spool.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from node.ingest.dataset_end import HeaderError
from node.ingest.header import parse_file_header
from node.ingest.index import Index, StoredInstance
from node.ingest.spool import Spool, named_uid

#: Spool files looked up in the index per query after a crash.
LOOKUP_CHUNK = 500


def recover_spool(spool: Spool, index: Index) -> int:
    """Index complete spool files whose row a crash prevented; return how many.

    A ``kill -9`` between the rename into the spool and the index commit leaves a whole,
    fsynced file that was never acknowledged. Indexing it keeps the index and the spool
    equal; a file that cannot be parsed is removed (it can only be ours if it is whole).
    With a recorded spool checkpoint only the series folders written since it are listed,
    each file looked up by its UID; without one (a database older than the checkpoint) the
    whole spool is walked against every indexed path. Either way a new checkpoint is
    recorded at the end: the spool and the index agree.
    """
    since = index.spool_checkpoint()
    if since is None:
        known = index.indexed_paths()
        candidates: Iterable[str] = (p for p in spool.files() if p not in known)
    else:
        candidates = _without_rows(index, spool.files(changed_since=since))
    recovered = 0
    for relpath in candidates:
        path = spool.path(relpath)
        try:
            header = parse_file_header(path)
        except HeaderError:
            spool.remove(relpath)
            continue
        if since is not None and _has_row(index, relpath, header.sop_instance_uid):
            continue  # a hashed name: its header says which row is its
        stat = path.stat()
        index.store(
            StoredInstance(
                header=header, path=relpath, size_bytes=stat.st_size, received_at=stat.st_mtime
            )
        )
        recovered += 1
    index.spool_agrees()
    return recovered


def _without_rows(index: Index, relpaths: Iterable[str]) -> Iterator[str]:
    """The files among ``relpaths`` whose name's UID has no row naming them, looked up
    ``LOOKUP_CHUNK`` at a time; a hashed name is yielded (its header tells)."""
    chunk: list[str] = []
    for relpath in relpaths:
        chunk.append(relpath)
        if len(chunk) < LOOKUP_CHUNK:
            continue
        yield from _unindexed(index, chunk)
        chunk = []
    yield from _unindexed(index, chunk)


def _unindexed(index: Index, relpaths: list[str]) -> list[str]:
    uids = [uid for uid in map(named_uid, relpaths) if uid is not None]
    known = index.paths_of(uids)
    return [relpath for relpath in relpaths if relpath not in known]


def _has_row(index: Index, relpath: str, sop_instance_uid: str | None) -> bool:
    """Whether the row of ``sop_instance_uid`` (None: not known yet) names ``relpath``."""
    if sop_instance_uid is None:
        return False
    row = index.indexed_copy(sop_instance_uid)
    return row is not None and row[0] == relpath
