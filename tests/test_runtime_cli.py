"""``ainode plugins list|check`` against golden output, and ``ainode shadow report``."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from pydicom.sr.coding import Code

from models.api import AlgorithmIdentification, Findings, Measurement, Segment
from node.cli import main
from node.db import connect
from node.shadow import masks_dir_for, record_findings

GOLDEN = Path(__file__).parent / "golden" / "plugins"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    status = main(list(argv))
    return status, capsys.readouterr().out


@pytest.mark.parametrize("command", ["list", "check"])
def test_plugins_command_matches_golden_output(
    command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(GOLDEN)
    status, out = _run(capsys, "plugins", command, "--plugin-dir", "tree", "--no-entry-points")
    assert out == (GOLDEN / f"expected-{command}.txt").read_text()
    assert status == (1 if command == "check" else 0)  # check fails: broken manifests


def test_check_passes_when_every_manifest_is_sound(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(GOLDEN / "tree" / "lung-seg", tmp_path / "lung-seg")
    status, out = _run(
        capsys, "plugins", "check", "--plugin-dir", str(tmp_path), "--no-entry-points"
    )
    assert status == 0
    assert out.splitlines()[-1] == "1 manifest(s): 1 ok, 0 broken"


def test_a_changed_model_file_is_caught_by_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plugin = shutil.copytree(GOLDEN / "tree" / "lung-seg", tmp_path / "lung-seg")
    with open(plugin / "model.onnx", "ab") as model:
        model.write(b"\0")
    status, out = _run(
        capsys, "plugins", "check", "--plugin-dir", str(tmp_path), "--no-entry-points"
    )
    assert status == 1
    assert "sha256 mismatch" in out


def test_plugins_list_reads_plugin_dirs_from_node_yaml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(GOLDEN / "tree" / "report-writer", tmp_path / "plugins" / "report-writer")
    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump({"plugin_dirs": ["plugins"], "storage": {"data_dir": "d"}}))
    status, out = _run(capsys, "plugins", "list", "--config", str(config), "--no-entry-points")
    assert status == 0
    assert out.splitlines()[1].split() == ["report-writer", "3.0.0", "python", "cpu", "ready"]


def _findings(version: str, mask: np.ndarray, diameter: float) -> Findings:
    lung = Code("39607008", "SCT", "Lung")
    structure = Code("123037004", "SCT", "Anatomical Structure")
    return Findings(
        AlgorithmIdentification("lung-seg", version),
        segments=(Segment("lung", "Lung", structure, lung, mask),),
        study_measurements=(
            Measurement(Code("81827009", "SCT", "Diameter"), diameter, Code("mm", "UCUM", "mm")),
        ),
    )


def test_shadow_report_prints_dice_and_measurement_differences(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump({"storage": {"data_dir": "data"}}))
    data = tmp_path / "data"
    conn = connect(data / "ainode.sqlite3")
    conn.execute("PRAGMA foreign_keys=OFF")  # findings rows without the jobs they came from
    production = np.zeros((1, 4, 4), bool)
    production[0, :2, :] = True  # 8 pixels
    shadow = np.zeros((1, 4, 4), bool)
    shadow[0, 1:3, :] = True  # 8 pixels, 4 shared: Dice = 2·4 / 16 = 0.5
    record_findings(
        conn,
        job_id=1,
        series_instance_uid="1.2.3",
        mode="production",
        findings=_findings("1.0.0", production, 10.0),
        masks_dir=masks_dir_for(data),
    )
    record_findings(
        conn,
        job_id=2,
        series_instance_uid="1.2.3",
        mode="shadow",
        findings=_findings("1.1.0", shadow, 12.5),
        masks_dir=masks_dir_for(data),
    )
    conn.close()

    status, out = _run(capsys, "shadow", "report", "--config", str(config))
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == (
        "series 1.2.3: production lung-seg@1.0.0 (job 1) vs shadow lung-seg@1.1.0 (job 2)"
    )
    assert lines[1].split() == ["segment", "Lung", "Dice", "0.500"]
    assert lines[2].split()[-2:] == ["Δ", "+2.5"]
    assert lines[-1] == "1 series compared; mean Dice 0.500"
