"""Job runners for executor tests: what a plugin run can do (succeed, raise, hang, crash,
wait for the test), without models. The plugin name of the job picks the behaviour; each runs
in a worker process.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from pipeline_rows import secondary_capture
from pydicom import dcmread

from node.config import NodeConfig
from node.jobs.work import ResultFile, WorkItem, WorkResult
from node.outputs.uids import uid_from_name
from node.shared_types import OutputKind


class FakeRunner:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.pid = os.getpid()

    def close(self) -> None:
        """Nothing held between jobs."""

    def run(self, item: WorkItem) -> WorkResult:
        behaviour = item.plugin
        if behaviour == "raise":
            raise RuntimeError("plugin exploded on purpose")
        if behaviour == "hang":
            time.sleep(3600)
        if behaviour == "crash":
            os._exit(3)
        if behaviour == "crash-once" and item.attempt == 1:
            os._exit(4)
        if behaviour.startswith("gated"):  # runs until the test opens the gate
            wait_for_gate(gate(self.config))
        source = dcmread(item.files[0], stop_before_pixels=True)
        results = []
        item.output_dir.mkdir(parents=True, exist_ok=True)
        for index, kind in enumerate((OutputKind.SEG, OutputKind.SR)):
            if kind not in item.output_kinds:
                continue
            ds = secondary_capture(source.StudyInstanceUID, uid_from_name(item.job_key), index)
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid_from_name(
                f"{item.job_key}/{item.study_version}/{kind.value}"
            )
            ds.SeriesDescription = f"pid {self.pid}"
            path = item.output_dir / f"{kind.value}.dcm"
            ds.save_as(path, enforce_file_format=True)
            results.append(
                ResultFile(
                    str(ds.SOPInstanceUID),
                    str(ds.SOPClassUID),
                    kind,
                    str(path.relative_to(item.outputs_root)),
                )
            )
        return WorkResult(item.job_id, tuple(results), {"inference": 0.01})


def gate(config: NodeConfig) -> Path:
    """The file whose existence lets every ``gated*`` job finish."""
    return Path(config.storage.data_dir) / "gate-open"


def wait_for_gate(path: Path, limit_s: float = 120.0) -> None:
    deadline = time.monotonic() + limit_s  # a test that never opens it still ends
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def result_pid(path: Path) -> int:
    return int(dcmread(path).SeriesDescription.split()[1])
