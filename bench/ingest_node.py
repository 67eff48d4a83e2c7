"""``ainode serve`` as ``bench/ingest.py`` runs it: with phase timers, optionally without fsync.

Bench-only instrumentation, so that bench/README.md can say where ainode's time goes. Nothing
here is reachable from node.yaml or the ``ainode`` CLI: the switches exist in this process only.

- ``--stats FILE``: on SIGUSR1 (and on exit), write the seconds spent per receive phase since
  the last write (JSON) and start counting afresh: the whole store handler
  (``StorageSCP.store``), header parse, spool write, every ``fsync`` (file and folder), index
  commit; with ``storage.journal`` also the journal's append and commit (the Success path)
  and the mover's batches (off it).
- ``--no-durability``: ``fsync`` becomes a no-op and SQLite runs ``synchronous=OFF``. The
  node then breaks its contract (Success before the bytes are on disk); the bench uses it
  only to measure what the contract costs.

    python bench/ingest_node.py --config node.yaml --stats stats.json [--no-durability]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

PHASES = (
    "handler",
    "parse",
    "spool_write",
    "fsync",
    "index_store",
    "journal_append",
    "journal_commit",
    "mover_file",
)


class PhaseTimer:
    """Seconds and calls per phase, summed over every thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.calls = dict.fromkeys(PHASES, 0)

    def wrap(self, phase: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - started
                with self._lock:
                    self.seconds[phase] += elapsed
                    self.calls[phase] += 1

        return timed

    def write(self, path: Path) -> None:
        """Write the counts so far (atomically: the bench waits for the file) and reset."""
        with self._lock:
            counts = {"seconds": self.seconds, "calls": self.calls}
            self.seconds = dict.fromkeys(PHASES, 0.0)
            self.calls = dict.fromkeys(PHASES, 0)
        temp = path.with_suffix(".part")
        temp.write_text(json.dumps(counts))
        temp.replace(path)


def instrument(timer: PhaseTimer, *, durable: bool) -> None:
    """Patch the receive path of this process (see the module docstring)."""
    import node  # the tree ``--repo`` names: look in its folder, not through the import system

    if (Path(node.__file__).parent / "ingest").is_dir():
        package, parse_caller = "node.ingest", "node.ingest.store"
    else:  # an older tree (--compare-tree): the same modules in node/, the parse in node.scp
        package, parse_caller = "node", "node.scp"
    scp = importlib.import_module(f"{package}.scp").StorageSCP
    # ``store`` since the direct C-STORE path; an older tree has ``_on_store``.
    handler = "store" if hasattr(scp, "store") else "_on_store"
    setattr(scp, handler, timer.wrap("handler", getattr(scp, handler)))
    parser = importlib.import_module(parse_caller)
    parser.parse_header = timer.wrap("parse", parser.parse_header)
    spool = importlib.import_module(f"{package}.spool").Spool
    spool.write = timer.wrap("spool_write", spool.write)  # type: ignore[method-assign]
    index = importlib.import_module(f"{package}.index").Index
    index.store = timer.wrap("index_store", index.store)  # type: ignore[method-assign]
    if (Path(node.__file__).parent / "ingest" / "mover.py").exists():
        journal = importlib.import_module(f"{package}.journal").Journal
        journal.append = timer.wrap("journal_append", journal.append)  # type: ignore[method-assign]
        journal.commit = timer.wrap("journal_commit", journal.commit)  # type: ignore[method-assign]
        filer = importlib.import_module(f"{package}.move").BatchFiler
        filer.file = timer.wrap("mover_file", filer.file)  # type: ignore[method-assign]
    fsync = os.fsync if durable else (lambda fd: None)
    os.fsync = timer.wrap("fsync", fsync)
    if not durable:

        def unsynchronised(self: Any, *, replacing: bool) -> None:
            self._conn.execute("PRAGMA synchronous=OFF")

        index._synchronise = unsynchronised  # type: ignore[method-assign]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--stats", type=Path, required=True)
    parser.add_argument("--no-durability", action="store_true")
    parser.add_argument("--log-level", default="WARNING", help="INFO: the start-up lines too")
    parser.add_argument(
        "--repo", type=Path, default=REPO, help="the ainode source tree to run (default: ours)"
    )
    args = parser.parse_args()
    sys.path.insert(0, str(args.repo.resolve()))
    from node.cli import main as ainode_main

    timer = PhaseTimer()
    instrument(timer, durable=not args.no_durability)
    signal.signal(signal.SIGUSR1, lambda signum, frame: timer.write(args.stats))
    try:
        return ainode_main(["--log-level", args.log_level, "serve", "--config", str(args.config)])
    finally:
        timer.write(args.stats)


if __name__ == "__main__":
    raise SystemExit(main())
