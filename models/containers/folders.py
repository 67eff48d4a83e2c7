"""The folder contracts vendors' images already follow, so their products run unchanged.

* **mercure module**: the series as DICOM files in ``MERCURE_IN_DIR`` (``/tmp/data``) with
  ``task.json`` beside them; results into ``MERCURE_OUT_DIR`` (``/tmp/output``).
* **MONAI Application Package**: the image declares ``/etc/monai/app.json``; its
  ``input.path`` and ``output.path`` (relative to ``workingDirectory``) are where the series
  goes and where results are read, and ``HOLOSCAN_INPUT_PATH`` / ``HOLOSCAN_OUTPUT_PATH`` /
  ``MONAI_INPUTPATH`` / ``MONAI_OUTPUTPATH`` name them.

Both also get ``AINODE_DEVICE`` (``cpu`` or ``cuda:0``: a passed-through GPU is the
container's first) and ``task.json``'s ``ainode`` section: the frame order a findings.json
indexes, and the study and series UIDs. No patient identifiers are written by the node.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from models.api import PluginInput
from models.containers.spec import ContractKind
from models.findings_codec import CONTRACT

__all__ = [
    "APP_MANIFEST_PATH",
    "TASK_FILE",
    "AppManifest",
    "FolderLayout",
    "layout_for",
    "stage_input",
]

APP_MANIFEST_PATH = "/etc/monai/app.json"
TASK_FILE = "task.json"
MERCURE_IN = "/tmp/data"
MERCURE_OUT = "/tmp/output"


@dataclass(frozen=True)
class AppManifest:
    """What a MAP's ``app.json`` declares (the parts the node uses)."""

    input_path: str  # absolute, inside the container
    output_path: str
    working_directory: str
    timeout_s: float | None
    sdk: str
    version: str

    @classmethod
    def from_json(cls, raw: bytes) -> AppManifest:
        try:
            data = json.loads(raw)
            workdir = str(data.get("workingDirectory") or "/var/holoscan/")
            input_path = str(data["input"]["path"])
            output_path = str(data["output"]["path"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f"{APP_MANIFEST_PATH} does not declare input.path and output.path: {exc}"
            ) from exc
        timeout = data.get("timeout") or None
        return cls(
            input_path=posixpath.join(workdir, input_path),
            output_path=posixpath.join(workdir, output_path),
            working_directory=workdir,
            timeout_s=None if timeout is None else float(timeout),
            sdk=f"{data.get('sdk', 'unknown sdk')} {data.get('sdkVersion', '')}".strip(),
            version=str(data.get("version", "")),
        )

    def describe(self) -> str:
        return (
            f"MAP ({self.sdk}, app {self.version or 'unversioned'}): input {self.input_path}, "
            f"output {self.output_path}"
        )


@dataclass(frozen=True)
class FolderLayout:
    """Where the input and output folders appear inside the container, and its environment."""

    contract: ContractKind
    input_dir: str
    output_dir: str
    environment: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


def layout_for(contract: ContractKind, app: AppManifest | None) -> FolderLayout:
    """The layout of a resolved contract (not AUTO): a MAP needs its app manifest."""
    if contract is ContractKind.MONAI_APP:
        if app is None:
            raise ValueError(f"a MONAI Application Package declares {APP_MANIFEST_PATH}")
        env = {
            "HOLOSCAN_INPUT_PATH": app.input_path,
            "HOLOSCAN_OUTPUT_PATH": app.output_path,
            "MONAI_INPUTPATH": app.input_path,
            "MONAI_OUTPUTPATH": app.output_path,
        }
        return FolderLayout(contract, app.input_path, app.output_path, MappingProxyType(env))
    if contract is ContractKind.MERCURE:
        env = {"MERCURE_IN_DIR": MERCURE_IN, "MERCURE_OUT_DIR": MERCURE_OUT}
        return FolderLayout(contract, MERCURE_IN, MERCURE_OUT, MappingProxyType(env))
    raise ValueError(f"contract {contract.value} must be resolved first")


def stage_input(series: PluginInput, folder: Path) -> int:
    """Put the series' files into ``folder`` as ``<series>#<instance>.dcm`` (hard links where
    the file system allows, else copies); the number of files."""
    if not series.files:
        raise ValueError("the input names no files; a container needs the series' DICOM files")
    folder.mkdir(parents=True, exist_ok=True)
    for path, header in zip(series.files, series.headers, strict=True):
        target = folder / f"{series.series_instance_uid}#{header.SOPInstanceUID}.dcm"
        try:
            os.link(path, target)
        except OSError:
            shutil.copyfile(path, target)
    return len(series.files)


def write_task(
    series: PluginInput, folder: Path, *, run_id: str, plugin: str, device: str, settings: dict
) -> Path:
    """mercure's ``task.json`` (the parts a module reads) plus the node's own section."""
    task = {
        "id": run_id,
        "info": {
            "action": "process",
            "uid": series.series_instance_uid,
            "uid_type": "series",
            "triggered_rules": {plugin: True},
            "applied_rule": plugin,
        },
        "process": {"module_name": plugin, "settings": settings, "retain_input_images": False},
        "dispatch": {},
        "ainode": {
            "study_instance_uid": series.study_instance_uid,
            "series_instance_uid": series.series_instance_uid,
            "device": device,
            "findings_contract": CONTRACT,
            "frames": [
                {"sop_instance_uid": s.sop_instance_uid, "frame_number": s.frame_number}
                for s in series.sources
            ],
        },
    }
    path = folder / TASK_FILE
    path.write_text(json.dumps(task, indent=1), encoding="utf-8")
    return path
