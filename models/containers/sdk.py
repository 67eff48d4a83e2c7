"""Inside an image: run a ``models.api`` plugin on the folder contract the node speaks.

``python -m models.containers.sdk --plugin /opt/plugin`` (the folder of a ``plugin.yaml``
whose runner is python, onnx or torchscript) reads the series from ``MERCURE_IN_DIR``
(else ``HOLOSCAN_INPUT_PATH`` or ``MONAI_INPUTPATH``), runs the plugin on the device named by
``AINODE_DEVICE`` and writes ``findings.json`` with NIfTI masks (a boxed mask as its box's
``.npy``) to ``MERCURE_OUT_DIR`` (else ``HOLOSCAN_OUTPUT_PATH`` or ``MONAI_OUTPUTPATH``).
With ``AINODE_WARM_DIR`` set it stays up and serves job folders
(``models.containers.plugin``'s warm protocol) until it is stopped.

This is how a vendor packages a product for ainode in a few lines::

    FROM python:3.11-slim
    RUN pip install ainode                      # or COPY a wheel: no network at run time
    COPY my_plugin/ /opt/plugin/                # plugin.yaml, the model, the entry module
    USER 10001:10001
    ENTRYPOINT ["python3", "-m", "models.containers.sdk", "--plugin", "/opt/plugin"]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

from models.api import Device, DeviceKind, Plugin
from models.containers.findings_json import write_findings
from models.containers.folders import TASK_FILE
from models.loading import load_plugin_input
from models.manifest import load_manifest
from models.runners.python import instantiate

_POLL_S = 0.02


def _folder(*names: str) -> Path:
    for name in names:
        value = os.environ.get(name)
        if value:
            return Path(value)
    raise SystemExit(f"none of {', '.join(names)} is set: which folder holds the series?")


def _device() -> Device:
    name = os.environ.get("AINODE_DEVICE", "cpu")
    if name.startswith("cuda"):
        return Device(DeviceKind.CUDA, int(name.partition(":")[2] or 0))
    return Device()


def process(plugin: Plugin, in_dir: Path, out_dir: Path) -> None:
    """One series: the DICOM files of ``in_dir`` → findings.json and masks in ``out_dir``."""
    files = [p for p in sorted(in_dir.rglob("*")) if p.is_file() and p.name != TASK_FILE]
    series = load_plugin_input(files)
    started = time.monotonic()
    findings = plugin.run(series)
    write_findings(findings, series, out_dir)
    print(
        f"{plugin.name} {plugin.version}: {len(files)} files, {len(findings.segments)} segments, "
        f"{len(findings.findings)} findings in {time.monotonic() - started:.2f}s",
        flush=True,
    )


def serve_warm(plugin: Plugin, jobs: Path) -> int:
    """Answer every ``<job>/request.json`` with ``<job>/done.json``, until stopped."""
    print(f"{plugin.name} {plugin.version}: warm, serving {jobs}", flush=True)
    while True:
        for request in sorted(jobs.glob("*/request.json")):
            job = request.parent
            if (job / "done.json").exists():
                continue
            reply: dict[str, object] = {"status": 0}
            try:
                paths = json.loads(request.read_text(encoding="utf-8"))
                process(plugin, Path(paths["input"]), Path(paths["output"]))
            except Exception as exc:
                traceback.print_exc()
                reply = {"status": 1, "error": f"{type(exc).__name__}: {exc}"}
            temp = job / ".done.json"
            temp.write_text(json.dumps(reply), encoding="utf-8")
            temp.rename(job / "done.json")
        time.sleep(_POLL_S)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.containers.sdk")
    parser.add_argument("--plugin", type=Path, required=True, help="folder of the plugin.yaml")
    args = parser.parse_args(argv)
    plugin = instantiate(load_manifest(args.plugin))
    plugin.load(_device())
    warm = os.environ.get("AINODE_WARM_DIR")
    if warm:
        return serve_warm(plugin, Path(warm))
    in_dir = _folder("MERCURE_IN_DIR", "HOLOSCAN_INPUT_PATH", "MONAI_INPUTPATH")
    out_dir = _folder("MERCURE_OUT_DIR", "HOLOSCAN_OUTPUT_PATH", "MONAI_OUTPUTPATH")
    try:
        process(plugin, in_dir, out_dir)
    except Exception:
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
