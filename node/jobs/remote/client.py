"""A worker's calls to the node's HTTP API (``node_api``), with bounded retries.

The node may restart while a worker runs a job: each call is tried again with a growing
pause until ``deadline_s``; a 409 means the node no longer wants this attempt (it finished,
was cancelled, or a newer attempt runs) and ends the job on the worker quietly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

from pydantic import BaseModel

from node.jobs.remote.protocol import SeriesFile

LOG = logging.getLogger(__name__)
CHUNK = 1 << 20


class NodeUnreachable(Exception):
    """The node did not answer within the deadline."""


class AttemptGone(Exception):
    """The node answered 409: drop this attempt."""


class NodeClient:
    def __init__(
        self, node_url: str, token: str, ca_file: Path | None = None, deadline_s: float = 600
    ) -> None:
        self.base = node_url.rstrip("/") + "/api/worker"
        self._token = token
        self._deadline_s = deadline_s
        self._context = ssl.create_default_context(cafile=ca_file) if ca_file else None

    def _request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str = "application/json",
    ) -> urllib.request.Request:
        request = urllib.request.Request(self.base + path, data=body, method=method)
        request.add_header("Authorization", f"Bearer {self._token}")
        if body is not None:
            request.add_header("Content-Type", content_type)
        return request

    def _call(self, method: str, path: str, body: bytes | None = None, **kw) -> bytes:
        deadline = time.monotonic() + self._deadline_s
        pause = 0.5
        while True:
            try:
                with urllib.request.urlopen(
                    self._request(method, path, body, **kw), timeout=60, context=self._context
                ) as answer:
                    return answer.read()
            except urllib.error.HTTPError as error:
                detail = error.read().decode(errors="replace")[:500]
                if error.code == 409:
                    raise AttemptGone(detail) from error
                if error.code < 500:
                    raise RuntimeError(
                        f"node refused {method} {path}: {error.code} {detail}"
                    ) from error
                problem = f"{error.code} {detail}"
            except (urllib.error.URLError, OSError) as exc:
                problem = str(exc)
            if time.monotonic() + pause > deadline:
                raise NodeUnreachable(f"{method} {path}: {problem}")
            LOG.warning("node: %s %s failed (%s); again in %.1fs", method, path, problem, pause)
            time.sleep(pause)
            pause = min(pause * 2, 15)

    def post(self, path: str, message: BaseModel) -> dict:
        return json.loads(self._call("POST", path, message.model_dump_json().encode()) or b"{}")

    def fetch(self, job_id: int, attempt: int, file: SeriesFile, target: Path) -> None:
        """One series file to ``target``, checked against its size and SHA-256."""
        path = f"/jobs/{job_id}/attempts/{attempt}/files/{file.index}"
        deadline = time.monotonic() + self._deadline_s
        while True:
            try:
                with (
                    urllib.request.urlopen(
                        self._request("GET", path), timeout=60, context=self._context
                    ) as answer,
                    target.open("wb") as out,
                ):
                    shutil.copyfileobj(answer, out, CHUNK)
                break
            except urllib.error.HTTPError as error:
                if error.code == 409:
                    raise AttemptGone(error.read().decode(errors="replace")) from error
                if error.code < 500 or time.monotonic() > deadline:
                    raise
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    raise
            time.sleep(1)
        digest = hashlib.sha256(target.read_bytes()).hexdigest()
        if target.stat().st_size != file.size or digest != file.sha256:
            raise NodeUnreachable(f"series file {file.index} arrived damaged: try the job again")

    def upload(self, job_id: int, attempt: int, name: str, source: Path) -> None:
        path = f"/jobs/{job_id}/attempts/{attempt}/results/{name}"
        self._call("PUT", path, source.read_bytes(), content_type="application/dicom")
