"""Isolated plugins: their own interpreter and package versions, restarted after a crash."""

from __future__ import annotations

import importlib.metadata
import os
import signal
import subprocess
import sys
import sysconfig
import threading
from pathlib import Path

import highdicom
import numpy as np
import pytest
from conftest import wait_until
from pydicom import Dataset
from pydicom.sr.coding import Code
from runtime_support import write_plugin

from models.api import (
    AlgorithmIdentification,
    Finding,
    Findings,
    GraphicKind,
    ImageGraphic,
    Measurement,
    PluginInput,
    QualitativeEvaluation,
    Report,
    Segment,
    SourceFrame,
)
from models.devices import GpuSlots
from models.discovery import discover
from models.isolation import decode_findings, decode_input, encode_findings, encode_input
from models.runtime import PluginError, PluginHost, PluginTimeout

PACKAGE = "idna"  # small and pure Python; the venv gets a version other than ours


def _our_version() -> str | None:
    """PACKAGE's version in the node's own environment; None where it is not installed."""
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None


REPORTER = """
    import os, sys, time
    from pathlib import Path
    from models.api import AlgorithmIdentification, Findings, Report

    class Reporter:
        def __init__(self, manifest):
            self.name, self.version = manifest.name, manifest.version
            self.marks = Path(manifest.directory) / "marks"

        def load(self, device):
            pass

        def run(self, series):
            import idna
            self.marks.mkdir(exist_ok=True)
            attempt = len(list(self.marks.glob("attempt-*"))) + 1
            pid_file = self.marks / f".pid-{attempt}"
            pid_file.write_text(str(os.getpid()))
            os.replace(pid_file, self.marks / f"attempt-{attempt}")  # whole, or not there
            if series.modality == "WAIT" and attempt == 1:
                while not (self.marks / "never").exists():   # until the test kills us
                    time.sleep(0.01)
            if series.modality == "FAIL":
                raise RuntimeError("vendor model exploded")
            print("vendor chatter on stdout must not break the protocol")
            return Findings(
                AlgorithmIdentification(self.name, self.version),
                report=Report(sys.executable, f"idna {idna.__version__} attempt {attempt}"),
            )
"""


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A throw-away venv over our site-packages holding another version of PACKAGE."""
    ours = _our_version()
    folder = tmp_path_factory.mktemp("vendor-venv")
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(folder)],
        check=True,
    )
    python = folder / "bin" / "python"
    # Our packages stay visible behind the venv's own even when we run from a venv ourselves
    # (--system-site-packages only reaches the base interpreter's): a .pth appends them.
    their_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours_site = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(their_site, "ainode-host.pth").write_text("\n".join(sorted(ours_site)) + "\n")
    installed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            "--no-deps",
            f"{PACKAGE}!={ours}" if ours else PACKAGE,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if installed.returncode != 0:
        pytest.skip(
            f"cannot install another {PACKAGE} from the package index: "
            f"{installed.stderr.strip()[-300:]}"
        )
    theirs = subprocess.run(
        [str(python), "-c", f"import {PACKAGE}; print({PACKAGE}.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert theirs != ours
    return python, theirs


def _series(modality: str) -> PluginInput:
    return PluginInput(
        study_instance_uid="1.2",
        series_instance_uid="1.2.3",
        modality=modality,
        pixels=np.arange(18, dtype=np.float32).reshape(2, 3, 3),
        sources=(
            SourceFrame("1.2.840.10008.5.1.4.1.1.2", "1.2.3.1"),
            SourceFrame("1.2.840.10008.5.1.4.1.1.2", "1.2.3.2"),
        ),
        pixel_spacing=(0.5, 0.5),
    )


def _host(tmp_path: Path, python: Path) -> PluginHost:
    write_plugin(
        tmp_path / "plugins" / "vendor",
        name="vendor",
        entry="plugin:Reporter",
        code=REPORTER,
        extra={"python": str(python)},
    )
    slots = GpuSlots((), 1, tmp_path / "slots")
    return PluginHost(discover([tmp_path / "plugins"], entry_points=False), slots, timeout_s=120)


def test_an_isolated_plugin_sees_its_own_interpreter_and_package_version(
    tmp_path: Path, venv: tuple[Path, str]
) -> None:
    python, theirs = venv
    host = _host(tmp_path, python)
    try:
        findings = host.run("vendor", None, _series("CT"))
    finally:
        host.close()
    assert findings.report.findings == str(python)
    assert findings.report.impression == f"idna {theirs} attempt 1"
    assert theirs != _our_version()


def test_a_worker_killed_mid_job_is_restarted_and_the_job_retried(
    tmp_path: Path, venv: tuple[Path, str]
) -> None:
    python, theirs = venv
    host = _host(tmp_path, python)
    marks = tmp_path / "plugins" / "vendor" / "marks"
    outcome: list[Findings] = []
    job = threading.Thread(target=lambda: outcome.append(host.run("vendor", None, _series("WAIT"))))
    job.start()
    try:
        first = wait_until(lambda: (marks / "attempt-1").exists(), what="the job to start")
        assert first
        os.kill(int((marks / "attempt-1").read_text()), signal.SIGKILL)
        job.join(timeout=120)
        assert outcome, "the job did not finish after the worker was killed"
        assert outcome[0].report.impression == f"idna {theirs} attempt 2"
        (loaded,) = host.loaded()
        assert loaded.key == "vendor@1.0.0"
        assert int((marks / "attempt-2").read_text()) != int((marks / "attempt-1").read_text())
    finally:
        host.close()


def test_an_error_inside_the_isolated_plugin_fails_the_job_with_its_message(
    tmp_path: Path, venv: tuple[Path, str]
) -> None:
    python, _ = venv
    host = _host(tmp_path, python)
    try:
        with pytest.raises(PluginError, match="RuntimeError: vendor model exploded"):
            host.run("vendor", None, _series("FAIL"))
        assert host.run("vendor", None, _series("CT")).report is not None  # still usable
    finally:
        host.close()


def test_findings_and_inputs_survive_the_wire_protocol() -> None:
    mm = Code("mm", "UCUM", "millimeter")
    nodule = Code("27925004", "SCT", "Nodule")
    mask = np.zeros((2, 3, 3), bool)
    mask[1, 1:, 1:] = True
    findings = Findings(
        AlgorithmIdentification("vendor", "2.0"),
        segments=(
            Segment(
                "n1",
                "Nodule 1",
                Code("49755003", "SCT", "Morphologically Abnormal Structure"),
                nodule,
                mask,
                color_rgb=(255, 0, 0),
            ),
        ),
        findings=(
            Finding(
                "n1",
                nodule,
                segment_key="n1",
                measurements=(
                    Measurement(
                        Code("81827009", "SCT", "Diameter"),
                        4.5,
                        mm,
                        ImageGraphic(1, GraphicKind.LINE, ((1.0, 1.0), (2.0, 2.0))),
                    ),
                ),
                evaluations=(QualitativeEvaluation(nodule, nodule, 0.7),),
            ),
            Finding(
                "outline",
                nodule,
                region=ImageGraphic(0, GraphicKind.OUTLINE, ((0, 0), (0, 2), (2, 1))),
            ),
        ),
        report=Report("a nodule", "follow up"),
    )
    sources = (SourceFrame("1.2", "1.2.3.1"), SourceFrame("1.2", "1.2.3.2"))
    arrays: list[np.ndarray] = []
    # the line a length was measured along and an outline region survive: viewers draw them
    decoded = decode_findings(encode_findings(findings, arrays), arrays, sources)
    assert decoded.findings == findings.findings
    np.testing.assert_array_equal(decoded.segments[0].mask, mask)
    assert decoded.segments[0].color_rgb == (255, 0, 0)

    header = Dataset()
    header.Modality = "CT"
    header.SOPInstanceUID = "1.2.3.1"
    pixels = np.arange(18, dtype=np.float32).reshape(2, 3, 3)
    volume = highdicom.Volume.from_attributes(
        array=pixels,
        image_position=[1.0, 2.0, 3.0],
        image_orientation=[1, 0, 0, 0, 1, 0],
        pixel_spacing=[0.5, 0.5],
        spacing_between_slices=2.0,
        coordinate_system="PATIENT",
        frame_of_reference_uid="1.2.9",
    )
    series = PluginInput(
        "1.2",
        "1.2.3",
        "CT",
        pixels,
        (
            SourceFrame("1.2.840.10008.5.1.4.1.1.2", "1.2.3.1"),
            SourceFrame("1.2.840.10008.5.1.4.1.1.2", "1.2.3.2", 2),
        ),
        (0.5, 0.5),
        headers=(header,),
        volume=volume,
        prior={"lungs": findings},
    )
    arrays = []
    back = decode_input(encode_input(series, arrays), arrays)
    np.testing.assert_array_equal(back.pixels, pixels)
    np.testing.assert_allclose(back.volume.affine, volume.affine)
    assert back.sources == series.sources
    assert back.headers[0].SOPInstanceUID == "1.2.3.1"
    assert back.prior["lungs"].report == findings.report


def test_an_isolated_job_past_its_deadline_kills_the_worker(
    tmp_path: Path, venv: tuple[Path, str]
) -> None:
    python, _ = venv
    host = _host(tmp_path, python)
    marks = tmp_path / "plugins" / "vendor" / "marks"
    try:
        host.warm_up("vendor")
        with pytest.raises(PluginTimeout):
            host.run("vendor", None, _series("WAIT"), timeout_s=3.0)
        pid = int((marks / "attempt-1").read_text())

        def gone() -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            return False

        wait_until(gone, what="the timed-out worker to be killed")
        assert host.loaded() == ()
        # the next job gets a fresh worker (attempt 2 does not wait)
        assert host.run("vendor", None, _series("WAIT")).report.impression.endswith("attempt 2")
    finally:
        host.close()


def test_a_plugin_that_cannot_load_in_its_interpreter_fails_the_job_clearly(
    tmp_path: Path, venv: tuple[Path, str]
) -> None:
    python, _ = venv
    write_plugin(
        tmp_path / "plugins" / "needs-torch-9",
        name="needs-torch-9",
        entry="plugin:Model",
        code="import torch_version_nine  # not installed anywhere\n",
        extra={"python": str(python)},
    )
    host = PluginHost(
        discover([tmp_path / "plugins"], entry_points=False), GpuSlots((), 1, tmp_path / "s")
    )
    try:
        with pytest.raises(PluginError, match=r"cannot import plugin.*torch_version_nine"):
            host.run("needs-torch-9", None, _series("CT"))
        assert host.loaded() == ()
    finally:
        host.close()
