"""Manifests and discovery: schema errors that name the field, folders and entry points."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from runtime_support import write_plugin

from models.discovery import available_plugins, discover
from models.manifest import ManifestError, load_manifest
from models.manifest_checks import is_snomed_identifier

REPO = Path(__file__).resolve().parent.parent


def _manifest(tmp_path: Path, body: dict) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "plugin.yaml").write_text(yaml.safe_dump(body))
    return tmp_path


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"name": "p", "version": "1.0", "runner": "python"}, "runner python needs entry"),
        ({"name": "p", "version": "1.0", "runner": "onnx"}, "runner onnx needs model"),
        (
            {
                "name": "p",
                "version": "1.0",
                "runner": "onnx",
                "model": {"file": "m.onnx", "sha256": "ab" * 32},
            },
            "the generic plugin needs outputs.segments",
        ),
        (
            {
                "name": "p",
                "version": "1.0",
                "runner": "python",
                "entry": "plugin:P",
                "needs": ["p"],
            },
            "cannot need itself",
        ),
        (
            {
                "name": "p",
                "version": "1.0",
                "runner": "python",
                "entry": "plugin:P",
                "preprocessing": {"orientation": "LLS"},
            },
            "preprocessing.orientation: orientation is three letters",
        ),
        (
            {
                "name": "p",
                "version": "1.0",
                "runner": "python",
                "entry": "plugin",
                "resources": {"gpu": 2},
            },
            "entry: entry 'plugin' must be '<module>:<Class>'",
        ),
        (
            {
                "name": "p",
                "version": "1.0",
                "runner": "onnx",
                "entry": "plugin:P",
                "model": {"file": "m.onnx", "sha256": "xyz"},
            },
            "model.sha256: sha256 must be 64 hexadecimal digits",
        ),
        (
            {
                "name": "p",
                "version": "1.0",
                "runner": "python",
                "entry": "plugin:P",
                "resources": {"max_concurrent_jobs": 0},
            },
            "resources.max_concurrent_jobs: give 1 or more jobs at once, or leave it out",
        ),
    ],
)
def test_manifest_errors_name_the_field(tmp_path: Path, body: dict, message: str) -> None:
    with pytest.raises(ManifestError) as caught:
        load_manifest(_manifest(tmp_path, body))
    assert message in str(caught.value)
    assert str(tmp_path / "plugin.yaml") in str(caught.value)


def test_manifest_knows_its_folder_model_and_interpreter(tmp_path: Path) -> None:
    folder = _manifest(
        tmp_path / "dx",
        {
            "name": "dx-chest",
            "version": 1.2,
            "runner": "onnx",
            "entry": "plugin:Dx",
            "model": {"file": "model.onnx", "sha256": "AB" * 32},
            "python": "venv/bin/python",
        },
    )
    manifest = load_manifest(folder)
    assert manifest.directory == folder.resolve()
    assert manifest.model_path == folder.resolve() / "model.onnx"
    assert manifest.python == folder.resolve() / "venv" / "bin" / "python"
    assert manifest.version == "1.2"
    assert manifest.model.sha256 == "ab" * 32
    assert manifest.key == "dx-chest@1.2"


def test_snomed_identifiers_are_checked_by_their_check_digit() -> None:
    assert is_snomed_identifier("39607008")  # Lung
    assert is_snomed_identifier("123037004")  # Anatomical Structure
    assert not is_snomed_identifier("39607009")
    assert not is_snomed_identifier("lung")


def test_discovery_finds_nested_versions_and_reports_broken_manifests(tmp_path: Path) -> None:
    entry = {"entry": "plugin:P"}
    write_plugin(tmp_path / "a" / "1.0.0", name="alpha", version="1.0.0", extra=entry)
    write_plugin(tmp_path / "a" / "0.9.0", name="alpha", version="0.9.0", extra=entry)
    write_plugin(tmp_path / "b", name="beta", extra=entry)
    write_plugin(tmp_path / "b-copy", name="beta", extra=entry)
    _manifest(tmp_path / "broken", {"name": "Broken"})
    catalog = discover([tmp_path, tmp_path / "missing"], entry_points=False)
    assert [m.key for m in catalog.manifests] == ["alpha@0.9.0", "alpha@1.0.0", "beta@1.0.0"]
    assert catalog.get("alpha").version == "1.0.0"
    problems = {Path(p.source).name: p.message for p in catalog.problems}
    assert problems["b-copy"].startswith("beta@1.0.0 is also installed at")
    assert "name 'Broken' must be lowercase" in problems["plugin.yaml"]
    assert problems["missing"] == "plugin folder does not exist"


def test_entry_points_of_installed_distributions_are_discovered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "vendor_models"
    write_plugin(
        package / "lungs", name="vendor-lungs", version="4.2.0", extra={"entry": "plugin:P"}
    )
    (package / "__init__.py").write_text("")
    (package / "lungs" / "__init__.py").write_text("")
    info = tmp_path / "vendor_models-4.2.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vendor-models\nVersion: 4.2.0\n")
    (info / "entry_points.txt").write_text(
        "[ainode.plugins]\nvendor-lungs = vendor_models.lungs\nghost = vendor_models.ghost\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    catalog = discover([])
    assert [m.key for m in catalog.manifests] == ["vendor-lungs@4.2.0"]
    assert catalog.manifests[0].directory == (package / "lungs").resolve()
    (ghost,) = [p for p in catalog.problems if "ghost" in p.source]
    assert "ModuleNotFoundError" in ghost.message
    assert available_plugins([])["vendor-lungs"] == ("4.2.0",)


def test_the_reference_plugins_of_this_repository_load() -> None:
    catalog = discover([REPO / "models" / "plugins"], entry_points=False)
    assert catalog.problems == ()
    assert {"dx-chest", "ct-lung-nodule"} <= {m.name for m in catalog.manifests}
