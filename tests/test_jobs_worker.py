"""The worker's pipeline failing the ways a real job fails, each with the reason an operator
reads in ``ainode jobs``, and whether a retry could help."""

from __future__ import annotations

import threading
from multiprocessing import Pipe

import pytest
import yaml
from pipeline_rows import secondary_capture, seed_route_match
from pydicom import dcmread
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, generate_uid
from runtime_support import write_plugin

import node.outputs.build
from node.cli import main
from node.config import NodeConfig, load_node_config
from node.db import connect
from node.jobs import table
from node.jobs.executor import _serve
from node.jobs.table import JobState
from node.jobs.work import WorkItem
from node.jobs.worker import PipelineRunner, write_atomically
from node.outputs import ResultInstance
from node.shared_types import OutputKind, RetryPolicy

BROKEN = """
    class Broken:
        def __init__(self, manifest):
            self.name, self.version = manifest.name, manifest.version
        def load(self, device):
            pass
        def run(self, series):
            raise ValueError("lung fields not found")
"""

# a diameter drawn along a line on frame FRAME of the series (past its end: off the series)
MEASURED = """
    from pydicom.sr.codedict import codes

    from models.api import (
        AlgorithmIdentification, Finding, Findings, GraphicKind, ImageGraphic, Measurement,
    )

    FRAME = {frame}


    class Measured:
        def __init__(self, manifest):
            self.name, self.version = manifest.name, manifest.version
        def load(self, device):
            pass
        def run(self, series):
            line = ImageGraphic(FRAME, GraphicKind.LINE, ((1, 1), (1, 6)))
            diameter = Measurement(codes.SCT.Diameter, 2.5, codes.UCUM.Millimeter, line)
            return Findings(
                algorithm=AlgorithmIdentification(self.name, self.version),
                findings=(Finding("Nodule 1", codes.SCT.Nodule, measurements=(diameter,)),),
            )
"""


@pytest.fixture
def runner(tmp_path):
    plugins = tmp_path / "plugins"
    write_plugin(plugins / "broken", name="broken", entry="plugin:Broken", code=BROKEN)
    config = NodeConfig.model_validate(
        {"storage": {"data_dir": str(tmp_path / "data")}, "plugin_dirs": [str(plugins)]}
    )
    return PipelineRunner(config), config


def item_for(config, files, plugin="broken") -> WorkItem:
    outputs = config.storage.outputs_dir
    return WorkItem(
        job_id=1,
        job_key="study/route/plugin",
        attempt=1,
        study_instance_uid="1.2.3",
        study_version=1,
        series_instance_uid="1.2.3.4",
        plugin=plugin,
        plugin_version=None,
        files=tuple(files),
        output_dir=outputs / "job-1",
        outputs_root=outputs,
        output_kinds=(OutputKind.SEG, OutputKind.SR),
    )


def write_series(folder, count=3, undecodable=False, spacing=(0.5, 0.5)):
    """``spacing`` None: no PixelSpacing, which a plugin that needs one refuses."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    paths = []
    for seed in range(count):
        ds = secondary_capture(study, series, seed)
        if spacing is not None:
            ds.PixelSpacing = list(spacing)
        if undecodable:
            ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
            ds.PixelData = encapsulate([b"\xff\xd8 not a jpeg stream \xff\xd9"])
        path = folder / f"{seed}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def test_plugin_error_is_reported_and_retryable(runner, tmp_path):
    pipeline, config = runner
    result = pipeline.run(item_for(config, write_series(tmp_path / "ok")))
    assert not result.ok and result.retryable
    assert "lung fields not found" in result.error
    assert "load" in result.timings and "inference" not in result.timings


def test_undecodable_series_fails_for_good(runner, tmp_path):
    pipeline, config = runner
    result = pipeline.run(item_for(config, write_series(tmp_path / "bad", undecodable=True)))
    assert not result.ok and not result.retryable
    assert result.error.startswith("cannot load series:")


def test_missing_plugin_fails_for_good(runner, tmp_path):
    pipeline, config = runner
    result = pipeline.run(item_for(config, write_series(tmp_path / "ok"), plugin="nonesuch"))
    assert not result.ok and not result.retryable
    assert result.error.startswith("plugin unavailable:") and "nonesuch" in result.error


def test_model_file_that_changed_fails_for_good(tmp_path):
    """A model file that no longer matches its manifest's sha256 fails the job at once:
    retrying cannot make the bytes right, and the reason names the file."""
    plugins = tmp_path / "plugins"
    model = tmp_path / "weights.onnx"
    model.write_bytes(b"the weights the vendor shipped")
    folder = write_plugin(
        plugins / "swapped", name="swapped", entry="plugin:Broken", code=BROKEN, model=model
    )
    (folder / "weights.onnx").write_bytes(b"someone copied other weights over them")
    config = NodeConfig.model_validate(
        {"storage": {"data_dir": str(tmp_path / "data")}, "plugin_dirs": [str(plugins)]}
    )
    result = PipelineRunner(config).run(
        item_for(config, write_series(tmp_path / "ok"), plugin="swapped")
    )
    assert not result.ok and not result.retryable
    assert "sha256 mismatch" in result.error and "weights.onnx" in result.error


def test_series_without_spacing_fails_for_good_with_the_reason_on_the_job(tmp_path, capsys):
    """A plugin that needs a pixel spacing refuses a series without one at once (no 1 mm is
    assumed), and ``ainode jobs`` shows why."""
    plugins = tmp_path / "plugins"
    write_plugin(plugins / "broken", name="broken", entry="plugin:Broken", code=BROKEN)
    node_yaml = tmp_path / "node.yaml"
    node_yaml.write_text(
        yaml.safe_dump(
            {"storage": {"data_dir": str(tmp_path / "data")}, "plugin_dirs": [str(plugins)]}
        )
    )
    config = load_node_config(node_yaml)
    conn = connect(config.storage.database_path)
    seed_route_match(conn, "1.2.3", "1.2.3.4", plugin="broken")
    table.create_jobs(conn)
    job = table.claim_next(conn)
    result = PipelineRunner(config).run(
        item_for(config, write_series(tmp_path / "flat", spacing=None))
    )
    assert not result.ok and not result.retryable
    assert "broken@1.0.0 does not accept this series: it needs a calibrated pixel spacing" in (
        result.error
    )
    state = table.fail(
        conn, job.id, result.error, retryable=result.retryable, policy=RetryPolicy(5, 0, 0)
    )
    conn.close()
    assert state is JobState.FAILED
    assert main(["jobs", "--config", str(node_yaml)]) == 0
    out = capsys.readouterr().out
    assert "FAILED" in out
    assert "no calibrated pixel spacing (no PixelSpacing; no ImagerPixelSpacing)" in out


def measured_runner(tmp_path, frame: int) -> tuple[PipelineRunner, NodeConfig]:
    plugins = tmp_path / "plugins"
    code = MEASURED.format(frame=frame)
    write_plugin(plugins / "measured", name="measured", entry="plugin:Measured", code=code)
    config = NodeConfig.model_validate(
        {"storage": {"data_dir": str(tmp_path / "data")}, "plugin_dirs": [str(plugins)]}
    )
    return PipelineRunner(config), config


def test_findings_the_builders_refuse_fail_the_job_for_good(tmp_path):
    pipeline, config = measured_runner(tmp_path, frame=7)
    result = pipeline.run(item_for(config, write_series(tmp_path / "ok"), plugin="measured"))
    assert not result.ok and not result.retryable
    assert result.error.startswith("cannot build outputs: GraphicPlacementError:")
    assert "Nodule 1" in result.error


def test_a_bug_in_a_builder_is_a_crash_with_its_traceback_on_the_job(tmp_path, monkeypatch):
    """Not a quiet "cannot build outputs": the worker process reports the exception and the
    traceback that finds it, and the attempt counts as failed (retried)."""

    def buggy_report(findings, source, context, segmentation=None):
        return segmentation.SOPInstanceUID  # no SEG was built: None has no attribute

    monkeypatch.setattr(node.outputs.build, "build_measurement_report", buggy_report)
    pipeline, config = measured_runner(tmp_path, frame=0)
    item = item_for(config, write_series(tmp_path / "ok"), plugin="measured")
    with pytest.raises(AttributeError):
        pipeline.run(item)
    ours, theirs = Pipe()
    serving = threading.Thread(target=_serve, args=(theirs, pipeline))
    serving.start()
    ours.send(item)
    result = ours.recv()
    ours.send(None)
    serving.join(timeout=30)
    assert not result.ok and result.retryable
    assert result.error.startswith("runner error: AttributeError(")
    assert "Traceback (most recent call last)" in result.error
    assert "in buggy_report" in result.error


def _result(kind: OutputKind, seed: int) -> ResultInstance:
    return ResultInstance.of(kind, secondary_capture(generate_uid(), generate_uid(), seed))


def test_results_are_written_whole_and_replace_the_old_files(tmp_path):
    first = [(_result(OutputKind.SEG, 1), tmp_path / "seg.dcm")]
    write_atomically(first)
    replacement = _result(OutputKind.SEG, 2)
    write_atomically(
        [(replacement, tmp_path / "seg.dcm"), (_result(OutputKind.SR, 3), tmp_path / "sr.dcm")]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.dcm", "sr.dcm"]  # no temp file
    assert dcmread(tmp_path / "seg.dcm").SOPInstanceUID == replacement.sop_instance_uid


def test_a_builder_failing_midway_leaves_the_old_files_and_no_temp_file(tmp_path):
    old = _result(OutputKind.SEG, 1)
    write_atomically([(old, tmp_path / "seg.dcm")])

    def built():
        yield _result(OutputKind.SEG, 2), tmp_path / "seg.dcm"  # written while the SR builds
        raise ValueError("cannot build the SR")

    with pytest.raises(ValueError, match="cannot build the SR"):
        write_atomically(built())
    assert [p.name for p in tmp_path.iterdir()] == ["seg.dcm"]
    assert dcmread(tmp_path / "seg.dcm").SOPInstanceUID == old.sop_instance_uid
