"""The isolated interpreter's side of ``models.isolation``: ``python -m models.isolation_worker``.

Reads requests from stdin and answers on the real stdout (the file descriptor is moved aside
first and fd 1 pointed at stderr, so anything the plugin prints goes to the log, not into the
protocol). One plugin per process; exits when stdin closes.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import IO, Any

import numpy as np


def _serve(requests: IO[bytes], replies: IO[bytes]) -> int:
    from models.devices import is_out_of_memory
    from models.isolation import (
        decode_device,
        decode_input,
        encode_findings,
        read_message,
        write_message,
    )
    from models.manifest import load_manifest
    from models.runners.python import instantiate

    plugin = None
    while True:
        message = read_message(requests)
        if message is None:
            return 0
        header, arrays = message
        reply_arrays: list[np.ndarray] = []
        try:
            if header["op"] == "load":
                manifest = load_manifest(header["manifest"])
                plugin = instantiate(manifest)
                plugin.load(decode_device(header["device"]))
                reply: dict[str, Any] = {
                    "ok": True,
                    "interpreter": sys.executable,
                    "python_version": sys.version.split()[0],
                }
            elif header["op"] == "run":
                if plugin is None:
                    raise RuntimeError("run before load")
                findings = plugin.run(decode_input(header["input"], arrays))
                reply = {"ok": True, "findings": encode_findings(findings, reply_arrays)}
            else:
                raise ValueError(f"unknown op {header['op']!r}")
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            reply = {
                "ok": False,
                "error": f"{type(exc).__name__}: {exc}",
                "out_of_memory": is_out_of_memory(exc),
            }
            reply_arrays = []
        write_message(replies, reply, reply_arrays)


def main() -> int:
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return _serve(sys.stdin.buffer, replies)


if __name__ == "__main__":
    raise SystemExit(main())
