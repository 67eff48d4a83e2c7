"""The ``http`` stage of ``ainode serve``: uvicorn on its own thread, serving ``create_app``."""

from __future__ import annotations

import asyncio
import logging
import threading

import uvicorn

from node.config import NodeConfig
from node.console.action_log import ActionLog
from node.console.app import create_app
from node.console.context import ConsoleContext
from node.console.credentials import Credentials
from node.console.sessions import SessionStore

LOGGER = logging.getLogger(__name__)
START_TIMEOUT_S = 30.0


class ConsoleServer:
    name = "http"

    def __init__(self, config: NodeConfig, **context_options) -> None:
        http = config.http
        console = http.console
        users_file = console.users_file or config.storage.data_dir / "console" / "users.yaml"
        context = ConsoleContext(
            config=config,
            credentials=Credentials.load_or_create(users_file),
            sessions=SessionStore(console.session_hours * 3600, console.max_sessions),
            actions=ActionLog(config.storage.data_dir / "console" / "actions.log"),
            secure=http.tls,
            **context_options,
        )
        self.context = context
        tls = config.tls
        options = {}
        if http.tls:
            password_file = tls.key_password_file
            options = {
                "ssl_certfile": str(tls.certificate),
                "ssl_keyfile": str(tls.key),
                "ssl_keyfile_password": password_file.read_text().strip()
                if password_file
                else None,
                "ssl_ciphers": tls.ciphers,
            }
        self._server = uvicorn.Server(
            uvicorn.Config(
                create_app(context),
                host=http.host,
                port=http.port,
                log_level="warning",
                access_log=False,
                server_header=False,
                timeout_graceful_shutdown=5,
                **options,
            )
        )
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        http = self.context.config.http
        return f"{'https' if http.tls else 'http'}://{http.host}:{http.port}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="http-console", daemon=True)
        self._thread.start()
        deadline = threading.Event()
        waited = 0.0
        while not self._server.started and self._thread.is_alive() and waited < START_TIMEOUT_S:
            deadline.wait(0.02)
            waited += 0.02
        if not self._server.started:
            raise OSError(f"the HTTP server did not start on {self.url}")
        LOGGER.info(
            "console on %s/console/, API %s/api/openapi.json, status %s/status, metrics /metrics",
            self.url,
            self.url,
            self.url,
        )

    def _run(self) -> None:
        asyncio.run(self._server.serve())

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
