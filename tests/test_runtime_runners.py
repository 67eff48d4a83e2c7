"""Runners and the generic manifest-driven plugin against the model run directly in torch."""

from __future__ import annotations

import logging
from pathlib import Path

import highdicom
import numpy as np
import pytest
import torch
from runtime_support import (
    TinySegNet,
    export_onnx,
    export_torchscript,
    segments_yaml,
    write_plugin,
)

from models.api import Device, DeviceKind, PluginInput, SourceFrame
from models.manifest import Tiling, load_manifest
from models.preprocess import reorient, sliding_window
from models.runners.generic import GenericModelPlugin
from models.runners.onnx import CPU_PROVIDER, OnnxRunner
from models.runners.python import instantiate
from models.runners.torchscript import TorchScriptRunner

CPU = Device()


@pytest.fixture(scope="module")
def net2d() -> TinySegNet:
    return TinySegNet(dims=2).eval()


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory, net2d: TinySegNet) -> Path:
    folder = tmp_path_factory.mktemp("models")
    export_onnx(net2d, folder / "seg2d.onnx")
    export_torchscript(net2d, folder / "seg2d.pt")
    return folder


def _direct(net: torch.nn.Module, batch: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(np.ascontiguousarray(batch))).numpy()


def _series(pixels: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)) -> PluginInput:
    return PluginInput(
        study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.4",
        modality="CT",
        pixels=pixels.astype(np.float32),
        sources=tuple(
            SourceFrame("1.2.840.10008.5.1.4.1.1.2", f"1.2.3.4.{i}") for i in range(pixels.shape[0])
        ),
        pixel_spacing=spacing,
    )


def test_onnx_runner_equals_the_torch_module(models_dir: Path, net2d: TinySegNet) -> None:
    batch = np.random.default_rng(1).normal(size=(2, 1, 24, 20)).astype(np.float32)
    runner = OnnxRunner(models_dir / "seg2d.onnx", CPU)
    (logits,) = runner.run({runner.input_names[0]: batch})
    np.testing.assert_allclose(logits, _direct(net2d, batch), rtol=1e-4, atol=1e-5)
    assert runner.active_provider == CPU_PROVIDER


def test_torchscript_runner_equals_the_torch_module(models_dir: Path, net2d: TinySegNet) -> None:
    batch = np.random.default_rng(2).normal(size=(1, 1, 16, 16)).astype(np.float32)
    (logits,) = TorchScriptRunner(models_dir / "seg2d.pt", CPU).run(batch)
    np.testing.assert_allclose(logits, _direct(net2d, batch), rtol=1e-5, atol=1e-6)


def test_cuda_request_without_a_gpu_falls_back_to_cpu_and_says_why(
    models_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the fallback path is for CPU-only machines")
    caplog.set_level(logging.INFO, logger="models.runners")
    onnx = OnnxRunner(models_dir / "seg2d.onnx", Device(DeviceKind.CUDA, 0, 1 << 30))
    assert onnx.active_provider == CPU_PROVIDER
    assert "CUDA" in onnx.reason
    assert any(CPU_PROVIDER in r.getMessage() and "CUDA" in r.getMessage() for r in caplog.records)
    script = TorchScriptRunner(models_dir / "seg2d.pt", Device(DeviceKind.CUDA, 0))
    assert script.torch_device.type == "cpu"
    assert "no CUDA device" in script.reason


@pytest.mark.parametrize("runner", ["onnx", "torchscript"])
def test_generic_plugin_masks_equal_argmax_of_the_model(
    tmp_path: Path, models_dir: Path, net2d: TinySegNet, runner: str
) -> None:
    model = models_dir / ("seg2d.onnx" if runner == "onnx" else "seg2d.pt")
    folder = write_plugin(
        tmp_path / "p",
        name="tiny-seg",
        runner=runner,
        model=model,
        extra={
            "input": {"modalities": ["CT"], "dimensionality": "2d"},
            "preprocessing": {"window": {"center": 0, "width": 400}},
            "outputs": {"segments": segments_yaml()},
        },
    )
    plugin = instantiate(load_manifest(folder))
    assert isinstance(plugin, GenericModelPlugin)
    plugin.load(CPU)
    pixels = np.random.default_rng(3).uniform(-300, 300, size=(3, 20, 18))
    findings = plugin.run(_series(pixels))

    windowed = np.clip((pixels + 200) / 400, 0, 1).astype(np.float32)
    winners = _direct(net2d, windowed[:, np.newaxis]).argmax(axis=1)
    assert [s.label for s in findings.segments] == ["Left lung", "Right lung"]
    np.testing.assert_array_equal(findings.segment("left-lung").mask, winners == 1)
    np.testing.assert_array_equal(findings.segment("right-lung").mask, winners == 2)
    assert findings.segment("right-lung").type.value == "3341006"
    assert findings.algorithm.name == "tiny-seg"


def test_generic_plugin_resizes_to_the_model_size_and_back(
    tmp_path: Path, models_dir: Path
) -> None:
    folder = write_plugin(
        tmp_path / "p",
        name="tiny-seg",
        runner="onnx",
        model=models_dir / "seg2d.onnx",
        extra={
            "preprocessing": {"size": [16, 16], "normalise": {"mode": "zscore"}},
            "postprocessing": {"connected_components": {"keep_largest": 1}},
            "outputs": {"segments": segments_yaml()},
        },
    )
    plugin = instantiate(load_manifest(folder))
    plugin.load(CPU)
    findings = plugin.run(_series(np.random.default_rng(4).normal(size=(2, 40, 30))))
    from scipy import ndimage

    for segment in findings.segments:
        assert segment.mask.shape == (2, 40, 30)
        assert ndimage.label(segment.mask)[1] <= 1  # keep_largest: 1 over the whole stack


def test_sliding_window_equals_one_pass_for_a_pointwise_model() -> None:
    net = TinySegNet(dims=3, kernel=1).eval()
    image = np.random.default_rng(5).normal(size=(10, 23, 17)).astype(np.float32)

    def predict(tile: np.ndarray) -> np.ndarray:
        return _direct(net, tile[np.newaxis, np.newaxis])[0]

    tiled = sliding_window(image, Tiling(size=(4, 8, 8), overlap=0.5), predict)
    np.testing.assert_allclose(tiled, predict(image), rtol=1e-5, atol=1e-5)


def test_generic_3d_plugin_reorients_and_maps_masks_back(tmp_path: Path) -> None:
    net = TinySegNet(dims=3, kernel=3).eval()
    model = export_onnx(net, tmp_path / "seg3d.onnx", dims=3)
    folder = write_plugin(
        tmp_path / "p",
        name="tiny-seg-3d",
        runner="onnx",
        model=model,
        extra={
            "input": {"dimensionality": "3d"},
            "preprocessing": {"orientation": "RAS", "layout": "NCDHW"},
            "outputs": {"segments": segments_yaml((1,))},
        },
    )
    pixels = np.random.default_rng(6).normal(size=(5, 12, 10)).astype(np.float32)
    volume = highdicom.Volume.from_attributes(
        array=pixels,
        image_position=[0.0, 0.0, 0.0],
        image_orientation=[1, 0, 0, 0, 1, 0],
        pixel_spacing=[1.0, 1.0],
        spacing_between_slices=2.0,
        coordinate_system="PATIENT",
    )
    series = PluginInput(
        study_instance_uid="1.2",
        series_instance_uid="1.2.3",
        modality="CT",
        pixels=pixels,
        sources=tuple(SourceFrame("1.2.840.10008.5.1.4.1.1.2", f"1.2.3.{i}") for i in range(5)),
        pixel_spacing=(1.0, 1.0),
        volume=volume,
    )
    plugin = instantiate(load_manifest(folder))
    plugin.load(CPU)
    mask = plugin.run(series).segments[0].mask

    turned = reorient(volume, "RAS")
    assert turned.reoriented.array.shape != pixels.shape or not np.array_equal(
        turned.reoriented.array, pixels
    )
    logits = _direct(net, turned.reoriented.array[np.newaxis, np.newaxis])[0]
    expected = turned.undo((logits.argmax(axis=0) == 1).astype(np.float32)) > 0.5
    np.testing.assert_array_equal(mask, expected)


def test_two_versions_of_one_plugin_load_side_by_side(tmp_path: Path) -> None:
    code = """
        from models.api import AlgorithmIdentification, Findings, Report
        ANSWER = "{answer}"
        class Echo:
            def __init__(self, manifest):
                self.name, self.version = manifest.name, manifest.version
            def load(self, device):
                pass
            def run(self, series):
                return Findings(AlgorithmIdentification(self.name, self.version),
                                report=Report(ANSWER, ANSWER))
    """
    old = write_plugin(
        tmp_path / "echo-1",
        name="echo",
        version="1.0.0",
        entry="plugin:Echo",
        code=code.format(answer="old"),
    )
    new = write_plugin(
        tmp_path / "echo-2",
        name="echo",
        version="2.0.0",
        entry="plugin:Echo",
        code=code.format(answer="new"),
    )
    first, second = instantiate(load_manifest(old)), instantiate(load_manifest(new))
    series = _series(np.zeros((1, 4, 4)))
    assert first.run(series).report.findings == "old"
    assert second.run(series).report.findings == "new"
    assert first.run(series).report.findings == "old"
