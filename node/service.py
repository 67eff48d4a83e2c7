"""The running node: the storage SCP plus the background stages that move studies along.

Every stage after the SCP reads and writes the database on its own thread(s) and is built in
``build_stages``: the assembler here, and later the routing, job executor and dispatch stages.
``ainode serve`` constructs a ``Node`` from ``node.yaml``, starts it, waits for a signal and
stops it.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import threading
from typing import Protocol, runtime_checkable

from pydicom import config as pydicom_config

from models.containers.plugin import remove_leftovers
from models.errors import PluginError
from models.runtime import container_runtime_for
from node.assembler import StudyAssembler
from node.audit.events import ApplicationActivity
from node.audit.trail import DISABLED, AuditTrail
from node.config import ExecutorKind, NodeConfig
from node.console.server import ConsoleServer
from node.db import connect
from node.dispatch.dispatcher import Dispatcher
from node.durable import fsync_dir, sync_filesystem
from node.ingest.index import Index
from node.ingest.journal import Journal
from node.ingest.journal_format import Durability
from node.ingest.move import BatchFiler
from node.ingest.mover import JournalMover, replay
from node.ingest.receivers import ReceiverPool, replay_receiver_journals
from node.ingest.recovery import recover_spool
from node.ingest.scp import StorageSCP
from node.ingest.spool import Spool
from node.jobs.executor import LocalExecutor
from node.retention.runner import Retention
from node.retention.stage import RetentionStage
from node.routing.stage import RoutingStage
from node.vendors.inbox import VendorInbox, vendor_result_aes
from node.vendors.stage import VendorStage

LOGGER = logging.getLogger(__name__)

#: Written in the data folder when the node stops cleanly and removed when it starts. Start-up
#: walks the whole spool for files that missed their index row (a crash between rename and
#: commit, or a power loss that took rows the WAL had not flushed) only when it is missing:
#: on a spool of millions of files that walk takes minutes.
CLEAN_STOP_FILE = "clean-stop"
#: Written in the data folder once a node with ``storage.journal`` has started, removed when
#: one without it starts: while it is there only the journal's mover has written the spool,
#: and every file it wrote stays in the journal until indexed, so start-up after a crash
#: replays the journal and never walks the spool.
JOURNAL_ONLY_FILE = "journal-only"

#: The start-up log line for each ``storage.durability``: what a Success promises.
_DURABILITY_PROMISE = {
    Durability.FSYNC: "fsync (a Success means the instance is on stable storage)",
    Durability.OS: "os (a Success means the instance is written to the operating system: "
    "it survives a crash of the node, not a power loss)",
}


@runtime_checkable
class Stage(Protocol):
    """A background part of the node: polls the database on its own thread(s)."""

    name: str

    def start(self) -> None: ...

    def stop(self) -> None: ...


def build_stages(config: NodeConfig, audit: AuditTrail = DISABLED) -> list[Stage]:
    """Every background stage of the node, in start order (stopped in reverse)."""
    stages: list[Stage] = [
        StudyAssembler(config.storage.database_path, config.stability),
    ]
    routing: RoutingStage | None = None
    if config.routes_file.exists():
        routing = RoutingStage(config, audit=audit)
        stages.append(routing)
    else:
        LOGGER.warning(
            "routes file %s not found: studies are stored but not routed", config.routes_file
        )
    # jobs and dispatch come last: results flow from the executor to the senders
    dispatcher = Dispatcher(config, audit=audit)
    stages += [
        dispatcher,
        _executor(config, on_results=dispatcher.wake, audit=audit),
        VendorStage(config, on_results=dispatcher.wake),
    ]
    if config.http.port:
        reload_routes = routing.request_reload if routing is not None else None
        stages.append(
            ConsoleServer(
                config, audit=audit, reload_routes=reload_routes, wake_dispatcher=dispatcher.wake
            )
        )
    stages.append(RetentionStage(config, audit=audit))
    return stages


def _executor(config: NodeConfig, **options) -> Stage:
    """The ``jobs`` stage: worker processes here, or ``ainode worker``s through Celery."""
    if config.jobs.executor is ExecutorKind.CELERY:
        from node.jobs.remote.executor import CeleryExecutor

        return CeleryExecutor(config, **options)
    return LocalExecutor(config, **options)


def _finish_interrupted_purges(config: NodeConfig) -> None:
    """A purge a ``kill -9`` cut short is finished (or undone) before anything reads the
    spool: its study is whole in the trash or whole in the spool, never half in each."""
    conn = connect(config.storage.database_path)
    try:
        Retention(config).finish_interrupted(conn)
    finally:
        conn.close()


def _remove_container_leftovers(config: NodeConfig) -> None:
    """Containers and scratch folders of container plugins an earlier run left (a ``kill -9``
    mid-job): removed before any job can start a new one. Nothing to do (and no engine
    looked for) where no container plugin ever ran."""
    scratch = config.storage.data_dir / "containers"
    if not scratch.is_dir():
        return
    try:
        runtime = container_runtime_for(config.containers, config.storage.data_dir)
    except PluginError as exc:
        LOGGER.warning("cannot look for containers left by an earlier run: %s", exc)
        return
    removed = remove_leftovers(runtime)
    if removed:
        LOGGER.warning(
            "removed %d container(s) and scratch folder(s) left by an earlier run: %s",
            len(removed),
            ", ".join(sorted(set(removed))),
        )


def _open_journal(
    config: NodeConfig, spool: Spool, index: Index
) -> JournalMover | ReceiverPool | None:
    """Replay what the journals hold (whatever ``storage.journal`` and ``listener.processes``
    say now: an earlier run may have had them otherwise), then what receives into the
    journal: the mover of the node's own journal, the receiver processes (not yet started),
    or None without ``storage.journal``."""
    storage = config.storage
    folder = storage.journal_dir
    if not storage.journal and not folder.is_dir():
        return None
    filer = BatchFiler(spool, index, storage.durability, storage.database_path)
    replay_receiver_journals(config, filer)
    journal = Journal.open(
        folder, durability=storage.durability, segment_size=storage.journal_segment_mb << 20
    )
    try:
        replayed = replay(journal, filer)
    except BaseException:
        journal.close()
        raise
    if replayed.records:
        LOGGER.warning(
            "journal replayed: %d record(s), %d filed into the spool and index, %d held "
            "already, %d unreadable",
            replayed.records,
            replayed.filed,
            replayed.held,
            replayed.unreadable,
        )
    if storage.journal and config.listener.receiver_processes == 1:
        return JournalMover(journal, filer, index)
    journal.close()
    if storage.journal:
        return ReceiverPool(config, filer, index)
    shutil.rmtree(folder)  # everything in it is filed: give its segments' disk back
    fsync_dir(storage.data_dir)
    return None


def _log_work_left(config: NodeConfig, stopped: list[str]) -> None:
    """Say at stop what the node leaves for its next start (read only: a full disk allows it)."""
    try:
        conn = connect(config.storage.database_path)
        try:
            jobs = dict(conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
            pending = conn.execute("SELECT COUNT(*) FROM outbox WHERE state = 'PENDING'")
            outbox = pending.fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        LOGGER.warning("stopped stages %s; cannot count the work left: %s", ", ".join(stopped), exc)
        return
    LOGGER.info(
        "stopped stages %s; left for the next start: %d job(s) running (re-queued then), "
        "%d queued, %d awaiting a vendor, %d outbox row(s) pending",
        ", ".join(stopped) or "none",
        jobs.get("RUNNING", 0),
        jobs.get("QUEUED", 0),
        jobs.get("AWAITING_VENDOR", 0),
        outbox,
    )


class Node:
    """The SCP and the stages, started and stopped together."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self._stop_requested = threading.Event()
        self._started: list[Stage] = []
        self._index: Index | None = None
        self._vendor_inbox: VendorInbox | None = None
        self._mover: JournalMover | None = None
        #: The storage SCP: in this process, or its receiver processes (``listener.processes``)
        self.scp: StorageSCP | ReceiverPool | None = None
        self.audit: AuditTrail = DISABLED

    def start(self) -> None:
        """Prepare storage, recover from a crash, then serve; undo everything on failure."""
        # pydicom's warnings about invalid values quote the values: patient names included.
        pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
        storage = self.config.storage
        storage.data_dir.mkdir(parents=True, exist_ok=True)
        connect(storage.database_path).close()  # create the schema before any stage polls
        spool = Spool(storage.spool_dir, storage.min_free_mb * 1024 * 1024, storage.durability)
        LOGGER.info(
            "storage.durability: %s; %s",
            _DURABILITY_PROMISE[storage.durability],
            "storage.journal: a Success waits for the journal, the mover files it"
            if storage.journal
            else "a file per instance before its Success",
        )
        leftovers = spool.clear_temp()
        if leftovers:
            LOGGER.warning("removed %d partial file(s) left by an earlier crash", leftovers)
        _remove_container_leftovers(self.config)
        _finish_interrupted_purges(self.config)  # before recover_spool could re-index them
        self._index = Index(storage.database_path, spool.track_writes())  # the checkpoint
        clean_stop = storage.data_dir / CLEAN_STOP_FILE
        journal_only = storage.data_dir / JOURNAL_ONLY_FILE
        clean = clean_stop.exists()
        if clean:
            clean_stop.unlink()
            fsync_dir(storage.data_dir)  # a crash from now on must find no marker
        receiving = _open_journal(self.config, spool, self._index)
        receivers = receiving if isinstance(receiving, ReceiverPool) else None
        self._mover = receiving if isinstance(receiving, JournalMover) else None
        if not clean and not journal_only.exists():
            recovered = recover_spool(spool, self._index)
            if recovered:
                LOGGER.warning(
                    "indexed %d complete file(s) an earlier crash left unindexed", recovered
                )
        if storage.journal and not journal_only.exists():
            journal_only.touch()
            fsync_dir(storage.data_dir)
        elif not storage.journal and journal_only.exists():
            journal_only.unlink()
            fsync_dir(storage.data_dir)
        try:
            if self._mover is not None:
                self._mover.start()
            # first, so the stages and the SCP record into it; closed last in stop
            self.audit = AuditTrail.from_settings(
                self.config.audit, storage.data_dir, self.config.listener.ae_title
            )
            for stage in build_stages(self.config, self.audit):
                stage.start()
                self._started.append(stage)
                LOGGER.debug("stage %s started", stage.name)
            if receivers is not None:
                self.scp = receivers
            else:
                result_aes = vendor_result_aes(self.config)
                self._vendor_inbox = VendorInbox(self.config, result_aes) if result_aes else None
                self.scp = StorageSCP(
                    self.config, spool, self._index, self._vendor_inbox, self.audit, self._mover
                )
            self.scp.start()
            self.audit.record(ApplicationActivity(started=True))
        except BaseException:
            self.stop()
            raise

    def request_stop(self) -> None:
        """Ask ``wait`` to return (safe from a signal handler)."""
        self._stop_requested.set()

    def _mark_clean_stop(self) -> None:
        """Every spool file has its row, flushed to disk by the close: say so, durably. A
        full disk may refuse even this; the next start then walks the spool, as after a
        crash. In ``os`` mode the spool's files are flushed first, so a power loss after a
        clean stop loses nothing."""
        data_dir = self.config.storage.data_dir
        try:
            if self.config.storage.durability is Durability.OS:
                sync_filesystem(self.config.storage.spool_dir)
            (data_dir / CLEAN_STOP_FILE).touch()
            fsync_dir(data_dir)
        except OSError as exc:
            LOGGER.warning("cannot write the clean-stop marker: %s", exc.strerror)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until ``request_stop``; True if it was requested."""
        return self._stop_requested.wait(timeout)

    def stop(self) -> None:
        """Stop receiving first, then the stages in reverse order."""
        if self.scp is not None:
            self.scp.stop()
            self.scp = None
        if self._mover is not None:  # everything received filed, the journal retired
            self._mover.stop()
            self._mover = None
        if self._vendor_inbox is not None:
            self._vendor_inbox.close()
            self._vendor_inbox = None
        stopped: list[str] = []
        while self._started:
            stage = self._started.pop()
            try:
                stage.stop()
            except Exception:
                LOGGER.exception("stage %s did not stop cleanly", stage.name)
            stopped.append(stage.name)
        if self._index is not None:
            _log_work_left(self.config, stopped)
            flushed = self._index.close()
            self._index = None
            if flushed:
                self._mark_clean_stop()
            else:
                LOGGER.warning("stopped without the clean-stop marker: the next start re-indexes")
        if self.audit.enabled:
            self.audit.record(ApplicationActivity(started=False))
            self.audit.close()
            self.audit = DISABLED
        self._stop_requested.set()
