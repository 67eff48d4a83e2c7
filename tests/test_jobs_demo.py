"""``ainode demo`` on a fresh data folder: a phantom study for each reference plugin goes in,
its SEG and SRs (and, for the radiograph, a burned-in capture) come back to the results
folder, the summary names what was found, and the validator passes every result."""

from __future__ import annotations

import pytest
import yaml
from conftest import REPO, free_port

from node.cli import main

pytestmark = pytest.mark.dicom3tools


def test_demo_round_trip_for_every_reference_plugin(tmp_path, capsys, validate_dicom):
    config = yaml.safe_load((REPO / "config" / "node.yaml").read_text())
    config["listener"]["port"] = free_port()
    config["http"]["port"] = free_port()
    config["storage"]["data_dir"] = str(tmp_path / "data")
    config["routes_file"] = str(REPO / "config" / "routes.yaml")
    config["plugin_dirs"] = [str(REPO / "models" / "plugins")]
    config["destinations"]["results-folder"]["path"] = str(tmp_path / "results")
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(config))

    assert main(["demo", "--config", str(path), "--timeout", "600"]) == 0
    out = capsys.readouterr().out
    assert "ct-lung-nodule via route ct-chest-lung-nodule (production): SUCCEEDED" in out
    assert "dx-chest-report via route cxr-chest (production): SUCCEEDED" in out
    assert "mr-vessel-wall via route mr-neck-vessel-wall (production): SUCCEEDED" in out
    assert "lung nodules detected" in out
    assert "Cardiothoracic ratio" in out
    assert out.count("validator: PASS") == 3
    delivered = list((tmp_path / "results").rglob("*.dcm"))
    # SEG, TID 1500 SR and text SR for each of the three studies, and the radiograph's
    # burned-in capture (a generic destination's default for radiographs)
    assert len(delivered) == 10
    assert all(str(p) in out for p in delivered)
