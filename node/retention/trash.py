"""Moving a study's folders aside and back: the crash-safe first step of a purge.

A purge renames the study's spool folder (and its jobs' result folders) into a ``.purging``
folder on the same disk, deletes the rows in one transaction, then removes the trash. Each
rename is atomic and its folders are fsynced, so after a ``kill -9`` a study is either
whole in the spool, or whole in the trash (finished or undone at the next start), or gone:
never half deleted. ``Spool.files`` skips dot folders, so ``recover_spool`` never walks it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from node.durable import fsync_dir

TRASH_DIR_NAME = ".purging"

__all__ = ["TRASH_DIR_NAME", "StudyTrash", "folder_bytes", "interrupted"]


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder`` (0 when it is missing)."""
    total = 0
    for parent, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(parent, name)).st_size
            except FileNotFoundError:
                continue
    return total


def _move(source: Path, target: Path) -> bool:
    """Rename ``source`` to ``target`` (replacing a leftover there); False if it is missing."""
    if not source.exists():
        return False
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.rename(source, target)
    return True


def _merge_back(source: Path, target: Path) -> None:
    """Put ``source`` back at ``target``; where ``target`` was made again meanwhile (a late
    arrival), move each file whose place is free."""
    if not target.exists():
        os.rename(source, target)
        return
    for parent, _dirs, files in os.walk(source):
        relative = Path(parent).relative_to(source)
        for name in files:
            destination = target / relative / name
            if not destination.exists():
                destination.parent.mkdir(parents=True, exist_ok=True)
                os.rename(Path(parent) / name, destination)
                fsync_dir(destination.parent)
    shutil.rmtree(source, ignore_errors=True)


@dataclass(frozen=True)
class StudyTrash:
    """Where one study's folders go while it is purged: by its spool folder name."""

    spool_dir: Path
    outputs_dir: Path
    component: str  # node.ingest.spool.uid_component of the study UID

    @property
    def spool_folder(self) -> Path:
        return self.spool_dir / self.component

    @property
    def spool_trash(self) -> Path:
        return self.spool_dir / TRASH_DIR_NAME / self.component

    @property
    def outputs_trash(self) -> Path:
        return self.outputs_dir / TRASH_DIR_NAME / self.component

    def move_in(self, job_folders: list[str]) -> None:
        """Rename the study's spool folder, then its result folders, into the trash; durable
        on return."""
        if _move(self.spool_folder, self.spool_trash):
            fsync_dir(self.spool_trash.parent)
            fsync_dir(self.spool_dir)
        moved = [
            name
            for name in job_folders
            if _move(self.outputs_dir / name, self.outputs_trash / name)
        ]
        if moved:
            fsync_dir(self.outputs_trash)
            fsync_dir(self.outputs_trash.parent)
            fsync_dir(self.outputs_dir)

    def files(self) -> set[str]:
        """The trashed spool files, as spool paths (``study/series/instance.dcm``)."""
        found: set[str] = set()
        for parent, _dirs, names in os.walk(self.spool_trash):
            relative = Path(parent).relative_to(self.spool_trash.parent)
            found.update((relative / name).as_posix() for name in names if name.endswith(".dcm"))
        return found

    def move_back(self) -> None:
        """Undo ``move_in`` (the study is needed after all)."""
        if self.spool_trash.exists():
            _merge_back(self.spool_trash, self.spool_folder)
            fsync_dir(self.spool_dir)
            fsync_dir(self.spool_trash.parent)
        if self.outputs_trash.exists():
            for job_folder in list(self.outputs_trash.iterdir()):
                _merge_back(job_folder, self.outputs_dir / job_folder.name)
            self.outputs_trash.rmdir()
            fsync_dir(self.outputs_dir)
            fsync_dir(self.outputs_trash.parent)

    def empty(self) -> int:
        """Delete what is in the trash for this study; return the bytes freed."""
        freed = 0
        for folder in (self.spool_trash, self.outputs_trash):
            if folder.exists():
                freed += folder_bytes(folder)
                shutil.rmtree(folder)
                fsync_dir(folder.parent)
        return freed


def interrupted(spool_dir: Path, outputs_dir: Path) -> Iterator[StudyTrash]:
    """The purges a crash left in the trash (either root), one per study."""
    names: set[str] = set()
    for root in (spool_dir, outputs_dir):
        trash = root / TRASH_DIR_NAME
        if trash.is_dir():
            names.update(entry.name for entry in trash.iterdir())
    for name in sorted(names):
        yield StudyTrash(spool_dir, outputs_dir, name)
