"""``runner: triton`` against a real Triton Inference Server (PyTriton's bundled tritonserver,
serving the repo's dx-chest ONNX model through ONNX Runtime): the same findings as the local
runner, and ``plugins check`` naming each mismatch on its own."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, free_port
from plugin_support import PLUGINS, assert_same_dx_chest_findings, dx_chest_phantoms
from triton_support import TritonServer, triton_python_or_skip

from models.api import Device
from models.errors import PluginError
from models.manifest import load_manifest
from models.manifest_checks import Severity
from models.runners.python import instantiate
from models.runners.triton import triton_problems

MODEL = PLUGINS / "dx_chest" / "model.onnx"
TENSORS = {
    "inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 96, 96]}],
    "outputs": [{"name": "logits", "datatype": "FP32", "shape": [3, 96, 96]}],
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    triton_python_or_skip()
    with TritonServer.start(MODEL, "dx-chest", tmp_path_factory.mktemp("triton")) as running:
        yield running


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    return dx_chest_phantoms(tmp_path_factory.mktemp("cxr"))


def served_dx_chest(
    folder: Path, url: str, protocol: str = "http", version: str = "1.0.0", **triton
) -> Path:
    """dx-chest's own plugin folder with its model served: runner triton, same entry class."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = yaml.safe_load((PLUGINS / "dx_chest" / "plugin.yaml").read_text())
    del manifest["model"]
    manifest.update(
        name="dx-chest-served",
        version=version,
        runner="triton",
        triton={"url": url, "protocol": protocol, "model": "dx-chest", **TENSORS, **triton},
    )
    (folder / "plugin.yaml").write_text(yaml.safe_dump(manifest))
    for code in (PLUGINS / "dx_chest").glob("*.py"):  # the entry and its relative imports
        shutil.copy(code, folder / code.name)
    return folder


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_dx_chest_through_triton_finds_what_it_finds_locally(tmp_path, server, phantoms, protocol):
    local = instantiate(load_manifest(PLUGINS / "dx_chest"))
    local.load(Device())
    url = server.http_url if protocol == "http" else server.grpc_url
    served = instantiate(load_manifest(served_dx_chest(tmp_path, url, protocol, max_batch=1)))
    served.load(Device())
    for series in phantoms:
        assert_same_dx_chest_findings(served.run(series), local.run(series))


def _errors(spec_folder: Path) -> list[str]:
    manifest = load_manifest(spec_folder)
    assert manifest.triton is not None
    return [p.message for p in triton_problems(manifest.triton) if p.severity is Severity.ERROR]


def test_check_passes_a_manifest_that_matches_the_served_model(tmp_path, server):
    assert _errors(served_dx_chest(tmp_path, server.grpc_url, "grpc")) == []


def test_check_names_a_wrong_tensor_name(tmp_path, server):
    wrong = {**TENSORS, "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 96, 96]}]}
    [error] = _errors(served_dx_chest(tmp_path, server.http_url, **wrong))
    assert "input 'pixels' is not an input of the model (it has image)" in error


def test_check_names_a_wrong_datatype(tmp_path, server):
    wrong = {**TENSORS, "outputs": [{"name": "logits", "datatype": "FP16", "shape": [3, 96, 96]}]}
    [error] = _errors(served_dx_chest(tmp_path, server.http_url, **wrong))
    assert "output 'logits' is FP32 on the server, the manifest says FP16" in error


def test_check_names_a_wrong_shape(tmp_path, server):
    wrong = {**TENSORS, "inputs": [{"name": "image", "datatype": "FP32", "shape": [3, 96, 96]}]}
    [error] = _errors(served_dx_chest(tmp_path, server.http_url, **wrong))
    assert "input 'image' has shape [1, 96, 96] on the server" in error


def test_check_names_a_model_that_is_not_loaded(tmp_path, server):
    folder = served_dx_chest(tmp_path, server.http_url, model="dx-chest-v9")
    [error] = _errors(folder)
    assert "model 'dx-chest-v9'" in error and "is not loaded (not READY)" in error


def test_an_unreachable_server_is_a_retried_error_not_a_crash(tmp_path):
    folder = served_dx_chest(tmp_path, f"127.0.0.1:{free_port()}", timeout_s=2)
    [error] = _errors(folder)
    assert "unreachable" in error
    with pytest.raises(PluginError, match="Triton unreachable"):
        instantiate(load_manifest(folder)).load(Device())


def test_plugins_check_and_list_show_the_served_model(tmp_path, server):
    served_dx_chest(tmp_path / "plugins" / "ok", server.http_url)
    served_dx_chest(tmp_path / "plugins" / "gone", server.http_url, "http", "9.0.0", model="absent")
    common = ["--plugin-dir", str(tmp_path / "plugins"), "--no-entry-points"]
    done = subprocess.run(
        [sys.executable, "-m", "node", "plugins", "check", *common],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1, done.stdout
    assert "is READY, tensors as declared" in done.stdout
    assert "model 'absent'" in done.stdout
    listed = subprocess.run(
        [sys.executable, "-m", "node", "plugins", "list", *common],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout
    assert f"triton dx-chest@{server.http_url}" in listed
