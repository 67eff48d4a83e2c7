"""Container plugins in real podman: dx-chest in an image gives the in-process findings, a
broken image fails with its exit status and log, a hung one is killed at the deadline, and
nothing (container, scratch folder) outlives a run; ``plugins check`` reports the image."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, wait_until
from container_support import ENGINE, dx_chest_manifest, images_or_skip, write_manifest
from plugin_support import assert_same_dx_chest_findings, dx_chest_phantoms

from models.api import Device
from models.containers.collect import OutputRefused
from models.containers.engine import EngineSettings
from models.containers.plugin import ContainerFailed, ContainerPlugin, remove_leftovers
from models.devices import GpuSlots
from models.discovery import discover
from models.errors import PluginTimeout
from models.manifest import load_manifest
from models.runners.python import instantiate
from models.runtime import PluginHost, container_runtime_for

pytestmark = pytest.mark.containers


@pytest.fixture(scope="module")
def images():
    return images_or_skip()


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    return container_runtime_for(EngineSettings(**ENGINE), tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    return dx_chest_phantoms(tmp_path_factory.mktemp("cxr"))


def _nothing_left(runtime) -> bool:
    leftovers = list(runtime.scratch_root.iterdir()) if runtime.scratch_root.exists() else []
    return not runtime.engine.owned(runtime.owner) and not leftovers


@pytest.mark.parametrize("lifecycle", ["warm", "per-job"])
def test_dx_chest_in_a_container_finds_what_it_finds_in_process(
    tmp_path, images, runtime, phantoms, lifecycle
):
    reference = instantiate(load_manifest(REPO / "models" / "plugins" / "dx_chest"))
    reference.load(Device())
    image = images["dx-chest-mercure"]["image"]
    plugin = ContainerPlugin(
        load_manifest(dx_chest_manifest(tmp_path, image, lifecycle=lifecycle)), runtime
    )
    plugin.load(Device())
    try:
        cases = phantoms if lifecycle == "warm" else phantoms[:1]  # a container start each
        for series in cases:
            assert_same_dx_chest_findings(plugin.run(series), reference.run(series))
    finally:
        plugin.close()
    wait_until(lambda: _nothing_left(runtime), timeout=30, what="containers and scratch gone")


def _broken(tmp_path, images, runtime, mode: str) -> ContainerPlugin:
    folder = write_manifest(
        tmp_path,
        f"broken-{mode}",
        "1.0.0",
        images["broken"]["image"],
        container={"environment": {"BROKEN_MODE": mode}, "log_limit_kb": 8},
    )
    plugin = ContainerPlugin(load_manifest(folder), runtime)
    plugin.load(Device())
    return plugin


def test_a_failing_image_reports_its_status_and_the_tail_of_its_log(
    tmp_path, images, runtime, phantoms
):
    plugin = _broken(tmp_path, images, runtime, "exit")
    with pytest.raises(ContainerFailed) as caught:
        plugin.run(phantoms[0])
    message = str(caught.value)
    assert "container exited with status 3" in message
    assert "model weights corrupt: checksum mismatch" in message
    kept = Path(message.split("; log ", 1)[1].split(",", 1)[0])
    assert "checksum mismatch" in kept.read_text() and kept.stat().st_size <= 8 * 1024 + 100
    wait_until(lambda: _nothing_left(runtime), timeout=30, what="containers and scratch gone")


def test_garbage_output_is_refused(tmp_path, images, runtime, phantoms):
    plugin = _broken(tmp_path, images, runtime, "garbage")
    with pytest.raises(OutputRefused, match="not readable"):
        plugin.run(phantoms[0])
    wait_until(lambda: _nothing_left(runtime), timeout=30, what="containers and scratch gone")


def test_a_hung_image_is_killed_at_the_job_deadline(tmp_path, images, runtime, phantoms):
    write_manifest(
        tmp_path / "plugins",
        "broken-hang",
        "1.0.0",
        images["broken"]["image"],
        container={"environment": {"BROKEN_MODE": "hang"}},
    )
    slots = GpuSlots((), 1, tmp_path / "slots", check_cuda=False)
    host = PluginHost(
        discover([tmp_path / "plugins"], entry_points=False),
        slots,
        timeout_s=60,
        containers=(EngineSettings(**ENGINE), runtime.scratch_root.parent),
    )
    try:
        with pytest.raises(PluginTimeout, match="did not finish within the job timeout of 4 s"):
            host.run("broken-hang", None, phantoms[0], timeout_s=4)
        wait_until(lambda: _nothing_left(runtime), timeout=30, what="hung container removed")
    finally:
        host.close()


def test_start_up_removes_what_a_killed_node_left(tmp_path, images, runtime):
    folder = dx_chest_manifest(tmp_path, images["dx-chest-mercure"]["image"], lifecycle="warm")
    plugin = ContainerPlugin(load_manifest(folder), runtime)
    plugin.load(Device())  # a warm container and its scratch folder, never closed: a crash
    assert runtime.engine.owned(runtime.owner) and list(runtime.scratch_root.iterdir())
    removed = remove_leftovers(runtime)
    assert removed
    assert _nothing_left(runtime)


def _check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node", "plugins", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )


def test_plugins_check_reports_image_digest_engine_and_map(tmp_path, images):
    dx = images["dx-chest-mercure"]
    plugins = tmp_path / "plugins"
    write_manifest(plugins, "lungs-map", "1.0.0", images["lungs-map"]["image"])
    dx_chest_manifest(plugins, dx["image"])
    wrong = "sha256:" + "0" * 64
    dx_chest_manifest(plugins, dx["image"].split("@")[0] + "@" + wrong, version="9.0.0")
    write_manifest(plugins, "tagged", "1.0.0", dx["tag"])
    config = tmp_path / "node.yaml"
    config.write_text(
        f"storage: {{data_dir: {tmp_path / 'data'}}}\n"
        f"plugin_dirs: [{plugins}]\n"
        f"containers: {{runtime: runc, run_options: {ENGINE['run_options']}}}\n"
    )
    done = _check("check", "--config", str(config), "--no-entry-points")
    out = done.stdout
    assert done.returncode == 1, out
    assert "engine podman" in out
    assert "MAP (monai-deploy 2.0.0" in out and "/var/holoscan/input" in out
    assert "dx-chest-box@1.0.0" in out and "no /etc/monai/app.json: a mercure module" in out
    mismatch = next(line for line in out.splitlines() if "digest mismatch" in line)
    assert f"image {dx['image'].split('@')[0]} is here as " in mismatch
    assert dx["digest"] in mismatch and f"not the {wrong}" in mismatch
    assert "not pinned by digest" in out and "image inspect --format '{{.Digest}}' " in out
    listed = _check("list", "--config", str(config), "--no-entry-points").stdout
    assert f"container {images['lungs-map']['image']}" in listed
