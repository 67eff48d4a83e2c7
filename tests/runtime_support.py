"""Small models and plugin folders the runtime tests build for themselves.

``TinySegNet`` is a 3-class per-pixel classifier (a 3×3 convolution); tests export it to
ONNX and script it to TorchScript, then compare every runner with calling the module
directly. ``write_plugin`` writes a plugin folder (manifest, optional model and entry code).
"""

from __future__ import annotations

import shutil
import textwrap
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml

from models.manifest_checks import sha256_of

SEGMENT_CODES = {
    1: {
        "name": "Left lung",
        "category": {"value": "123037004", "scheme": "SCT", "meaning": "Anatomical Structure"},
        "type": {"value": "44029006", "scheme": "SCT", "meaning": "Left lung"},
    },
    2: {
        "name": "Right lung",
        "category": {"value": "123037004", "scheme": "SCT", "meaning": "Anatomical Structure"},
        "type": {"value": "3341006", "scheme": "SCT", "meaning": "Right lung"},
    },
}


class TinySegNet(torch.nn.Module):
    """(N, 1, *spatial) → (N, 3, *spatial) logits; 2D or 3D by ``dims``."""

    def __init__(self, dims: int = 2, kernel: int = 3, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        conv = torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d
        self.conv = conv(1, 3, kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def export_onnx(model: torch.nn.Module, path: Path, dims: int = 2) -> Path:
    example = torch.zeros((1, 1) + (8,) * dims)
    spatial = {i + 2: f"s{i}" for i in range(dims)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch", **spatial}, "logits": {0: "batch", **spatial}},
            opset_version=17,
            dynamo=False,
        )
    return path


def export_torchscript(model: torch.nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(model).save(str(path))
    return path


def write_plugin(
    folder: Path,
    *,
    name: str,
    version: str = "1.0.0",
    runner: str = "python",
    entry: str | None = None,
    code: str | None = None,
    model: Path | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """A plugin folder: plugin.yaml, optional model (its sha256 filled in) and plugin.py."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"name": name, "version": version, "runner": runner}
    if entry is not None:
        manifest["entry"] = entry
    if model is not None:
        if model.parent.resolve() != folder.resolve():
            shutil.copyfile(model, folder / model.name)
        manifest["model"] = {"file": model.name, "sha256": sha256_of(model)}
    manifest.update(extra or {})
    (folder / "plugin.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    if code is not None:
        (folder / "plugin.py").write_text(textwrap.dedent(code))
    return folder


def segments_yaml(labels: tuple[int, ...] = (1, 2)) -> list[dict[str, Any]]:
    return [{"label": label, **SEGMENT_CODES[label]} for label in labels]
