"""A real NVIDIA Triton Inference Server for the tests: tests/triton_server.py run with the Triton
venv's Python (scripts/install-triton.sh), serving one ONNX model on three free local ports.

    with TritonServer.start(model_file, "dx-chest", tmp_path) as server:
        client = tritonclient.http.InferenceServerClient(server.http_url)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO, free_port, poll_until

TRITON_PYTHON = REPO / ".cache" / "triton-venv" / "bin" / "python"
SERVER_SCRIPT = Path(__file__).resolve().parent / "triton_server.py"
START_TIMEOUT = 120.0
STOP_TIMEOUT = 20.0


def triton_python_or_skip() -> Path:
    """The Triton venv's Python; a skip with the reason (a failure under CI) where it is missing
    or cannot import pytriton."""
    reason = None
    if not TRITON_PYTHON.exists():
        reason = f"{TRITON_PYTHON} missing (run scripts/install-triton.sh)"
    else:
        done = subprocess.run(
            [str(TRITON_PYTHON), "-c", "import pytriton, onnxruntime"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if done.returncode:
            reason = f"pytriton unusable in {TRITON_PYTHON}: {done.stderr.strip()[-500:]}"
    if reason is None:
        return TRITON_PYTHON
    if os.environ.get("CI"):
        pytest.fail(f"Triton server unavailable: {reason}")
    pytest.skip(f"Triton server unavailable: {reason}")


class TritonServer:
    """One running tritonserver (its own process group) serving ``model_name``."""

    def __init__(
        self, process: subprocess.Popen, model_name: str, ports: dict[str, int], log: Path
    ) -> None:
        self.process = process
        self.model_name = model_name
        self.ports = ports
        self.log = log

    @classmethod
    def start(
        cls,
        model_file: Path,
        model_name: str,
        workdir: Path,
        *,
        max_batch_size: int = 16,
        also_unloaded: str | None = None,
    ) -> TritonServer:
        """Launch the server and return once ``model_name`` is ready (fails the test otherwise).
        ``also_unloaded`` names a second model the server lists in its repository but never loads.
        """
        python = triton_python_or_skip()
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
        log = workdir / f"triton-{model_name}.log"
        command = [
            str(python), str(SERVER_SCRIPT),
            "--model-file", str(model_file),
            "--model-name", model_name,
            "--http-port", str(ports["http"]),
            "--grpc-port", str(ports["grpc"]),
            "--metrics-port", str(ports["metrics"]),
            "--max-batch-size", str(max_batch_size),
        ]  # fmt: skip
        if also_unloaded:
            command += ["--also-unloaded", also_unloaded]
        # PyTriton keeps its workspace (a copy of tritonserver, the model store) under ~/.cache
        env = {**os.environ, "HOME": str(workdir), "PYTHONUNBUFFERED": "1"}
        with log.open("wb") as out:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=env, cwd=workdir, start_new_session=True,
            )  # fmt: skip
        server = cls(process, model_name, ports, log)
        try:
            server._wait_ready()
        except BaseException:
            server.stop()
            raise
        return server

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.ports['http']}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports['grpc']}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['metrics']}/metrics"

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _model_ready(self) -> bool:
        url = f"http://{self.http_url}/v2/models/{self.model_name}/ready"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _wait_ready(self) -> None:
        # ready over HTTP, and READY printed: the script sets up --also-unloaded after the load
        marker = f"READY {self.model_name}"

        def ready() -> bool:
            if self.process.poll() is not None:
                pytest.fail(
                    f"Triton server exited with {self.process.returncode} before "
                    f"{self.model_name} was ready; log tail:\n{self.log_tail()}"
                )
            return self._model_ready() and marker in self.log_tail(sys.maxsize)

        if not poll_until(ready, START_TIMEOUT, interval=0.1):
            pytest.fail(
                f"Triton server: {self.model_name} not ready after {START_TIMEOUT:.0f}s; "
                f"log tail:\n{self.log_tail()}"
            )

    def stop(self) -> None:
        """SIGTERM to the whole process group, SIGKILL to it after 20 s; idempotent."""
        for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            # the script is gone; its children (tritonserver, stubs) may linger in the group
            if poll_until(lambda: not _group_alive(self.process.pid), wait, interval=0.1):
                break

    def __enter__(self) -> TritonServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
