"""The node's receiver processes (``listener.processes`` > 1) and the one stage that files
what they journal.

``ReceiverPool`` holds the listening port(s) (a bound, not listening, SO_REUSEPORT socket,
so port 0 resolves once and a restarted receiver finds its port free), starts receiver
processes (``node.ingest.receiver``) with ``multiprocessing``'s spawn, and runs one filing
thread in the node's process: it reads every receiver's pipe, files their records in each
one's sequence order through the one ``BatchFiler`` (the only writer of the index), answers
``Filed``, syncs when a receiver asks to retire a segment, and counts releases once what came
before them is filed. A receiver that dies is replayed from its journal (everything it
acknowledged is there) and started again; connections the kernel had queued for it are
reset, and their callers retry.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path

from node.config import NodeConfig
from node.ingest import receiver_channel as channel
from node.ingest.association_slots import AssociationSlots
from node.ingest.index import Index
from node.ingest.journal import Journal, JournalError
from node.ingest.journal_format import segment_name
from node.ingest.move import BatchFiler, Journaled
from node.ingest.mover import BATCH_INSTANCES, GATHER_INSTANCES, GATHER_S, next_batch, replay
from node.ingest.receiver import receiver_journal_dir, serve
from node.ingest.receiver_channel import Mark, MarkKind

LOGGER = logging.getLogger(__name__)

#: How long a receiver may take to start listening.
START_TIMEOUT_S = 60.0
#: How long ``stop`` waits for the receivers to hand their journals over.
STOP_TIMEOUT_S = 40.0
#: The shortest time between two starts of one receiver (one that dies at once).
RESTART_INTERVAL_S = 1.0
#: How long replay waits for a dead receiver's journal lock (its process still exiting).
JOURNAL_LOCK_WAIT_S = 30.0


def open_journal_when_free(folder: Path, config: NodeConfig) -> Journal:
    """Open a receiver's journal once no process holds it (one that is exiting may still)."""
    deadline = time.monotonic() + JOURNAL_LOCK_WAIT_S
    while True:
        try:
            return Journal.open(
                folder,
                durability=config.storage.durability,
                segment_size=config.storage.journal_segment_mb << 20,
            )
        except JournalError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


class ReceiverStartError(RuntimeError):
    """A receiver process could not start serving; the message says why."""


class _ReceiverDied(ReceiverStartError):
    """A receiver process ended before it said whether it serves (killed, out of memory)."""


class SegmentReader:
    """Reads datasets out of one receiver's journal segments (a descriptor kept for the
    segment being read; an older one is closed when a newer one is opened: its records
    came first, and it stays on disk until they are filed, so a late one reopens it)."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._open: dict[int, int] = {}

    def read(self, segment: int, offset: int, length: int) -> bytes:
        fd = self._open.get(segment)
        if fd is None:
            fd = os.open(self._folder / segment_name(segment), os.O_RDONLY | os.O_CLOEXEC)
            for older in [number for number in self._open if number < segment]:
                os.close(self._open.pop(older))
            self._open[segment] = fd
        data = os.pread(fd, length, offset)
        if len(data) != length:
            raise OSError(f"segment {segment} of {self._folder} ends before byte {offset + length}")
        return data

    def close(self) -> None:
        while self._open:
            os.close(self._open.popitem()[1])


@dataclass(eq=False)
class _Link:
    """One receiver process, as the filing thread sees it."""

    number: int
    process: BaseProcess
    conn: Connection
    segments: SegmentReader
    filed: int = 0
    pending: dict[int, Journaled] = field(default_factory=dict)
    releases: list[tuple[int, tuple[str, ...], float]] = field(default_factory=list)
    sync_wanted: int = 0
    stopped_at: int | None = None  # its last record, once it stopped serving
    handed_over: bool = False  # everything it sent is filed and synced
    started: float = field(default_factory=time.monotonic)

    @property
    def drained(self) -> bool:
        """It stopped serving and everything it sent is filed."""
        return self.stopped_at is not None and self.stopped_at <= self.filed


class ReceiverPool:
    """N receiver processes on the node's port(s) and the filing thread behind them."""

    name = "receivers"

    def __init__(self, config: NodeConfig, filer: BatchFiler, index: Index) -> None:
        self._config = config
        self._filer = filer
        self._index = index
        self._count = config.listener.receiver_processes
        self._context = multiprocessing.get_context("spawn")
        self._counts = self._context.RawArray("i", self._count)
        self._lock_path = config.storage.journal_dir / "associations.lock"
        self._reserved: list[socket.socket] = []
        self._ports: dict[str, int | None] = {}
        self._links: dict[int, _Link] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        port = self._ports.get("port") or self._ports.get("tls_port")
        if port is None:
            raise RuntimeError("the receivers are not started")
        return self._config.listener.host, port

    # -- starting --------------------------------------------------------------------------

    def start(self) -> None:
        """Hold the port(s), start every receiver and wait until each listens; ``OSError``
        or ``ReceiverStartError`` (saying why) when one cannot."""
        self._config.storage.journal_dir.mkdir(parents=True, exist_ok=True)
        listener = self._config.listener
        try:
            if listener.plain:
                self._ports["port"] = self._reserve(listener.port)
            if listener.tls_port is not None:
                self._ports["tls_port"] = self._reserve(listener.tls_port)
            resolved = listener.model_copy(update=self._ports)
            self._receiver_config = self._config.model_copy(update={"listener": resolved})
            starting = [self._start_process(n) for n in range(1, self._count + 1)]
            for number, process, conn in starting:
                try:
                    self._links[number] = self._await_listening(number, process, conn)
                except _ReceiverDied as exc:
                    LOGGER.error("%s; starting it again", exc)
                    self._links[number] = self._spawn(number)
        except BaseException:
            self.stop()
            raise
        self._thread = threading.Thread(target=self._run, name="receivers-filing", daemon=True)
        self._thread.start()
        LOGGER.info(
            "%d receiver processes listening as %s on %s:%s",
            self._count,
            listener.ae_title,
            listener.host,
            "/".join(str(p) for p in self._ports.values() if p),
        )

    def _reserve(self, port: int) -> int:
        """Bind (without listening) an SO_REUSEPORT socket on the port: the receivers join
        it, and it stays ours while one of them is restarted."""
        host = self._config.listener.host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        self._reserved.append(sock)
        return int(sock.getsockname()[1])

    def _spawn(self, number: int) -> _Link:
        return self._await_listening(*self._start_process(number))

    def _start_process(self, number: int) -> tuple[int, BaseProcess, Connection]:
        AssociationSlots.forget(self._counts, number - 1, self._lock_path)
        ours, theirs = self._context.Pipe()
        level = logging.getLogger().getEffectiveLevel()
        args = (self._receiver_config, number, theirs, self._counts, self._lock_path, level)
        process = self._context.Process(
            target=serve, args=args, name=f"ainode-receiver-{number}", daemon=True
        )
        process.start()
        theirs.close()
        return number, process, ours

    def _await_listening(self, number: int, process: BaseProcess, ours: Connection) -> _Link:
        folder = receiver_journal_dir(self._config.storage.data_dir, number)
        link = _Link(number, process, ours, SegmentReader(folder))
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ours.poll(0.1):
            if time.monotonic() > deadline:
                process.kill()
                process.join()
                raise ReceiverStartError(f"receiver-{number} did not start in time")
            if not process.is_alive():
                raise _ReceiverDied(f"receiver-{number} exited {process.exitcode} at start")
        try:
            first = ours.recv()
        except EOFError as exc:
            process.join(5)
            raise _ReceiverDied(f"receiver-{number} exited {process.exitcode} at start") from exc
        if isinstance(first, channel.Failed):
            process.join(10)
            raise ReceiverStartError(f"receiver-{number} cannot serve: {first.reason}")
        assert isinstance(first, channel.Listening), first
        link.filed = first.filed_through
        return link

    # -- the filing thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            links = list(self._links.values())
            if self._stopping.is_set() and all(link.handed_over for link in links):
                return
            timeout = GATHER_S if any(link.pending for link in links) else 0.5
            ready = wait([link.conn for link in links if not link.conn.closed], timeout)
            for link in links:
                if link.conn in ready:
                    self._read(link)
            self._file_all(links, force=not ready)
            self._sync_where_asked(links)
            for link in links:
                gone = link.conn.closed or not link.process.is_alive()
                if gone and not link.handed_over:
                    self._revive(link)

    def _read(self, link: _Link) -> None:
        """Take what the receiver sent, at most a batch's worth."""
        for _ in range(BATCH_INSTANCES):
            try:
                if not link.conn.poll():
                    return
                message = link.conn.recv()
            except (EOFError, OSError):
                link.conn.close()
                return
            match message:
                case channel.Received(item, segment, offset, length):
                    try:
                        dataset = link.segments.read(segment, offset, length)
                    except OSError as exc:  # its journal is the record: replay it
                        LOGGER.error("receiver-%d's journal cannot be read: %s", link.number, exc)
                        link.process.kill()
                        link.conn.close()
                        return
                    link.pending[item.sequence] = dataclasses.replace(item, dataset=dataset)
                case channel.Released(studies, at, after):
                    link.releases.append((after, studies, at))
                case Mark(MarkKind.SYNC_WANTED, through):
                    link.sync_wanted = max(link.sync_wanted, through)
                case Mark(MarkKind.STOPPED, last):
                    link.stopped_at = last
                case _:
                    LOGGER.error("unexpected message from receiver-%d: %r", link.number, message)

    def _file_all(self, links: list[_Link], *, force: bool) -> None:
        for link in links:
            batch = next_batch(link.pending, link.filed)
            if not batch:
                continue
            young = time.time() - batch[0].received_at < GATHER_S
            if len(batch) < GATHER_INSTANCES and young and not force and link.stopped_at is None:
                continue
            try:
                self._filer.file(batch)
            except Exception:
                LOGGER.exception("filing receiver-%d's records failed; trying again", link.number)
                time.sleep(1.0)
                return
            for item in batch:
                del link.pending[item.sequence]
            link.filed = batch[-1].sequence
            self._tell(link, Mark(MarkKind.FILED, link.filed))
            due = [r for r in link.releases if r[0] <= link.filed]
            link.releases = [r for r in link.releases if r[0] > link.filed]
            for _, studies, at in due:
                self._index.mark_released(studies, at)

    def _sync_where_asked(self, links: list[_Link]) -> None:
        """One sync for every receiver that asked (a segment to retire) or stopped."""
        due = [
            link
            for link in links
            if (link.sync_wanted and link.sync_wanted <= link.filed)
            or (link.drained and not link.handed_over)
        ]
        if not due:
            return
        try:
            self._filer.sync()
        except OSError as exc:
            LOGGER.error("cannot sync the spool and index (%s): the journals keep it", exc)
            return
        for link in due:
            if link.drained:
                link.handed_over = True
            self._tell(link, Mark(MarkKind.SYNCED, link.filed))
            link.sync_wanted = 0

    @staticmethod
    def _tell(link: _Link, message: object) -> None:
        try:
            link.conn.send(message)
        except OSError:
            link.conn.close()

    def _revive(self, link: _Link) -> None:
        """A receiver died: file its journal (what it acknowledged), start the next."""
        link.process.join(10)
        if link.process.is_alive():
            link.process.kill()
            link.process.join()
        if not link.conn.closed:
            link.conn.close()
        link.segments.close()
        LOGGER.error(
            "receiver-%d (pid %s) ended with exit code %s; filing its journal",
            link.number,
            link.process.pid,
            link.process.exitcode,
        )
        folder = receiver_journal_dir(self._config.storage.data_dir, link.number)
        replay_receiver_journal(folder, self._config, self._filer)
        for _, studies, at in link.releases:
            self._index.mark_released(studies, at)
        if self._stopping.is_set():
            link.handed_over = True
            return
        time.sleep(max(0.0, link.started + RESTART_INTERVAL_S - time.monotonic()))
        try:
            self._links[link.number] = self._spawn(link.number)
        except (OSError, ReceiverStartError) as exc:
            LOGGER.error("receiver-%d cannot be started again: %s", link.number, exc)
            link.handed_over = True  # its journal is filed; the others go on

    # -- stopping ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop every receiver, file and sync what each sent, let each retire its journal."""
        self._stopping.set()
        for link in self._links.values():
            self._tell(link, channel.Stop())
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_S)
            if self._thread.is_alive():
                LOGGER.error("the receivers did not hand over within %.0f s", STOP_TIMEOUT_S)
            self._thread = None
        for link in self._links.values():
            link.segments.close()
            link.process.join(10)
            if link.process.is_alive():
                LOGGER.error("receiver-%d did not stop: killed; its journal replays", link.number)
                link.process.kill()
                link.process.join()
        self._links.clear()
        while self._reserved:
            self._reserved.pop().close()


def replay_receiver_journal(folder: Path, config: NodeConfig, filer: BatchFiler) -> None:
    """File what one receiver's journal holds, once no process holds it, and say so."""
    journal = open_journal_when_free(folder, config)
    try:
        replayed = replay(journal, filer)
    finally:
        journal.close()
    if replayed.records:
        LOGGER.warning(
            "%s's journal replayed: %d record(s), %d filed, %d held already, %d unreadable",
            folder.name,
            replayed.records,
            replayed.filed,
            replayed.held,
            replayed.unreadable,
        )


def replay_receiver_journals(config: NodeConfig, filer: BatchFiler) -> None:
    """At start-up, before any receiver runs: file what every receiver journal holds (an
    earlier run's receivers, whatever ``listener.processes`` is now)."""
    for folder in sorted(config.storage.journal_dir.glob("receiver-*")):
        if folder.is_dir():
            replay_receiver_journal(folder, config, filer)
