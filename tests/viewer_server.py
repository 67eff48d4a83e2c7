"""The peers the viewer tests open our results in: Orthanc with its DICOMweb plugin, and one
same-origin HTTP server that serves the OHIF Viewer build and proxies ``/dicom-web`` to Orthanc.

Why a proxy: Orthanc sends no CORS headers, so OHIF must reach DICOMweb on its own origin, as
in a hospital deployment behind one reverse proxy. Why our own ``app-config.js``: the build's
default points at a public demo server; ours names one data source and nothing else, so the
page makes no network call beyond this server.
"""

from __future__ import annotations

import http.client
import json
import mimetypes
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from orthanc import (
    DICOMWEB_CONFIG,
    DICOMWEB_PLUGIN,
    DICOMWEB_ROOT,
    OrthancServer,
    orthanc_available,
)

REPO = Path(__file__).resolve().parent.parent
OHIF_VERSION = "3.13.2"
OHIF_DIST = Path(
    os.environ.get("AINODE_OHIF_DIST", REPO / ".cache" / "ohif" / OHIF_VERSION / "dist")
)
# /usr/bin/chromium is Debian's shell wrapper; Playwright needs the binary itself
CHROMIUM = Path(os.environ.get("AINODE_CHROMIUM", "/usr/lib/chromium/chromium"))
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}
CHUNK = 256 * 1024
mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("text/javascript", ".js")


def missing_peers() -> list[str]:
    """What the viewer tests need and this machine lacks, each with how to get it."""
    missing = []
    if not orthanc_available():
        missing.append("Orthanc (apt-get install orthanc)")
    if not DICOMWEB_PLUGIN.exists():
        missing.append(f"{DICOMWEB_PLUGIN} (apt-get install orthanc-dicomweb)")
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    if not (OHIF_DIST / "index.html").exists():
        missing.append(f"{OHIF_DIST} (bash scripts/fetch-ohif.sh)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("playwright (pip install -e '.[test]')")
    return missing


def dicomweb_orthanc(workdir: Path) -> OrthancServer:
    """An Orthanc (not started) whose DICOMweb root is ``/dicom-web/``, the path OHIF asks."""
    return OrthancServer(workdir, plugins=(DICOMWEB_PLUGIN,), extra_config=DICOMWEB_CONFIG)


def app_config(origin: str) -> str:
    """OHIF's ``window.config``: one DICOMweb source on this origin, no study list, no
    investigational-use dialog (it would cover the viewport), a worker per core."""
    dicomweb = origin + DICOMWEB_ROOT
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "showStudyList": False,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "maxNumberOfWebWorkers": 2,
        "investigationalUseDialog": {"option": "never"},
        "defaultDataSourceName": "orthanc",
        "dataSources": [
            {
                "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
                "sourceName": "orthanc",
                "configuration": {
                    "friendlyName": "ainode test Orthanc",
                    "name": "orthanc",
                    "wadoUriRoot": dicomweb,
                    "qidoRoot": dicomweb,
                    "wadoRoot": dicomweb,
                    "qidoSupportsIncludeField": False,
                    "imageRendering": "wadors",
                    "thumbnailRendering": "wadors",
                    "enableStudyLazyLoad": True,
                    "supportsFuzzyMatching": False,
                    "supportsWildcard": True,
                    "staticWado": False,
                    "singlepart": "bulkdata,video",
                    "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
                    "omitQuotationForMultipartRequest": True,
                },
            }
        ],
    }
    return f"window.config = {json.dumps(config, indent=2)};\n"


class _Handler(BaseHTTPRequestHandler):
    """Static OHIF files with an SPA fallback, our app-config.js, and the DICOMweb proxy."""

    protocol_version = "HTTP/1.1"
    server: ViewerServer

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def log_message(self, format: str, *args: object) -> None:  # quiet: the page logs instead
        pass

    def _dispatch(self) -> None:
        path = urlsplit(self.path).path
        try:
            if path == DICOMWEB_ROOT or path.startswith(DICOMWEB_ROOT + "/"):
                self._proxy()
            elif path == "/app-config.js":
                self._send(200, "text/javascript", app_config(self.server.origin).encode())
            else:
                self._static(path)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the page navigated away mid-response

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _static(self, path: str) -> None:
        root = self.server.dist
        target = (root / path.lstrip("/")).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            target = root / "index.html"  # SPA routes such as /viewer
        content_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(target.stat().st_size))
        self.end_headers()
        if self.command != "HEAD":
            with open(target, "rb") as source:
                shutil.copyfileobj(source, self.wfile, CHUNK)

    def _proxy(self) -> None:
        """Forward to Orthanc with method, headers (Accept: multipart/related ...) and body;
        stream the answer back with its status and headers."""
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.orthanc_port, timeout=120)
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            self.send_response(response.status, response.reason)
            for key, value in response.getheaders():
                if key.lower() not in HOP_BY_HOP:
                    self.send_header(key, value)
            chunked = response.getheader("Content-Length") is None and self.command != "HEAD"
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if self.command == "HEAD":
                return
            while data := response.read(CHUNK):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        finally:
            upstream.close()


class ViewerServer(ThreadingHTTPServer):
    """OHIF and the DICOMweb proxy on one loopback origin (a free port)."""

    daemon_threads = True

    def __init__(self, dist: Path, orthanc_port: int) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.dist = Path(dist).resolve()
        self.orthanc_port = orthanc_port
        self.origin = f"http://127.0.0.1:{self.server_address[1]}"

    def server_bind(self) -> None:
        # many small DICOMweb answers (metadata, frames): no Nagle delay on any of them
        super().server_bind()
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle_error(self, request: object, client_address: object) -> None:
        """A tab closing mid-keep-alive resets its connections: not an error of ours."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def get_request(self) -> tuple[socket.socket, object]:
        connection, address = super().get_request()
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection, address


@contextmanager
def serving(dist: Path, orthanc_port: int) -> Iterator[ViewerServer]:
    """A running ``ViewerServer`` on its own thread, shut down and closed on exit."""
    server = ViewerServer(dist, orthanc_port)
    thread = threading.Thread(target=server.serve_forever, name="ohif-http", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
