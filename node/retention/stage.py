"""The retention stage: an aged-study purge every ``interval_s``, a free-disk check every
``free_check_s`` that starts an emergency purge below ``storage.min_free_mb``."""

from __future__ import annotations

import logging
import threading
import time

from node.audit.trail import DISABLED, AuditTrail
from node.config import NodeConfig
from node.db import connect
from node.retention.runner import Retention

LOGGER = logging.getLogger(__name__)


class RetentionStage:
    """A ``node.service.Stage`` on one thread with its own connection."""

    name = "retention"

    def __init__(
        self,
        config: NodeConfig,
        retention: Retention | None = None,
        audit: AuditTrail = DISABLED,
    ) -> None:
        self._config = config
        self.retention = retention or Retention(config, audit=audit)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        settings = self.retention.settings
        if not settings.enabled:
            LOGGER.warning(
                "retention is off (storage.retention.enabled: false): nothing is ever deleted "
                "and the spool grows until storage.min_free_mb refuses every C-STORE"
            )
            return
        LOGGER.info(
            "retention: studies %g days after delivery, result copies %g days; emergency "
            "purge below %d MB free %s",
            settings.days,
            settings.results_days,
            self._config.storage.min_free_mb,
            "on" if settings.emergency else "off",
        )
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="retention", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        settings = self.retention.settings
        conn = connect(self._config.storage.database_path)
        next_aged = time.monotonic()  # the first pass runs at start
        try:
            while not self._stop.is_set():
                try:
                    if self.retention.needs_emergency():
                        self.retention.purge_emergency(conn, self._stop.is_set)
                    if time.monotonic() >= next_aged:
                        next_aged = time.monotonic() + settings.interval_s
                        self.retention.finish_interrupted(conn)  # an ``ainode purge`` killed
                        self.retention.purge_aged(conn, self._stop.is_set)
                        self.retention.purge_results(conn)
                except Exception:
                    LOGGER.exception("retention pass failed; tried again later")
                self._stop.wait(settings.free_check_s)
        finally:
            conn.close()
