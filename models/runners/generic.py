"""The manifest-driven plugin: runs an ONNX or TorchScript model with no vendor code at all.

When a manifest has no ``entry``, this class is the plugin. Its ``run`` does, in order:
orientation (3d), window, normalisation, resampling to ``resample.spacing``, then either
``size`` (resize) or ``tiling`` (sliding window), the model, the activation, resampling the
probabilities back to the input grid, labels → coded segments, connected components.
``dimensionality: 2d`` runs the model once per frame; ``3d`` once per volume (or per tile).
"""

from __future__ import annotations

import numpy as np

from models.api import AlgorithmIdentification, Device, Findings, PluginInput
from models.manifest import Activation, Dimensionality, PluginManifest, RunnerKind
from models.postprocess import activate, masks_from, segments_from
from models.preprocess import (
    Reorientation,
    apply_window,
    normalise,
    reorient,
    resize_to,
    sliding_window,
    target_shape,
    to_layout,
)

__all__ = ["GenericModelPlugin"]


class GenericModelPlugin:
    """A Plugin built from a manifest alone (``entry`` absent)."""

    def __init__(self, manifest: PluginManifest) -> None:
        if manifest.runner is RunnerKind.PYTHON or (
            manifest.model_path is None and manifest.triton is None
        ):
            raise ValueError(
                f"{manifest.key}: the generic plugin needs an onnx/torchscript model or a "
                "Triton-served one"
            )
        self.manifest = manifest
        self.name = manifest.name
        self.version = manifest.version
        self._predict_batch = None

    def load(self, device: Device) -> None:
        if self.manifest.runner in (RunnerKind.ONNX, RunnerKind.TRITON):
            from models.runners.tensors import tensor_runner

            tensors = tensor_runner(self.manifest, device)
            input_name = self.manifest.preprocessing.input_name or tensors.input_names[0]
            self._predict_batch = lambda batch: tensors.run({input_name: batch})
        else:
            from models.runners.torchscript import TorchScriptRunner

            assert self.manifest.model_path is not None
            script = TorchScriptRunner(self.manifest.model_path, device)
            self._predict_batch = script.run

    def _predict(self, image: np.ndarray) -> np.ndarray:
        """One image (spatial axes only) → channels-first logits of the same spatial shape."""
        pre = self.manifest.preprocessing
        if self._predict_batch is None:
            raise RuntimeError(f"{self.manifest.key}: run() before load()")
        batch = to_layout(image[np.newaxis], pre.layout, pre.channels)
        output = self._predict_batch(batch)[self.manifest.postprocessing.output_index][0]
        if pre.layout.value[1] != "C":  # channels last → first
            output = np.moveaxis(output, -1, 0)
        if output.ndim == image.ndim:  # a single-channel output without a channel axis
            output = output[np.newaxis]
        return output

    def _infer(self, image: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
        """Preprocessed image → probabilities on the image's own grid, channels first."""
        pre = self.manifest.preprocessing
        post = self.manifest.postprocessing
        model_image = image
        if pre.resample is not None:
            model_image = resize_to(
                image, target_shape(image.shape, spacing, pre.resample.spacing), order=1
            )
        if pre.size is not None:
            if len(pre.size) != image.ndim:
                raise ValueError(
                    f"{self.manifest.key}: preprocessing.size has {len(pre.size)} values, "
                    f"the model input has {image.ndim} spatial dimensions"
                )
            model_image = resize_to(model_image, pre.size, order=1)
        if pre.tiling is not None:
            probabilities = sliding_window(
                model_image, pre.tiling, lambda tile: activate(self._predict(tile), post.activation)
            )
        else:
            probabilities = activate(self._predict(model_image), post.activation)
        order = 0 if post.activation is Activation.NONE else 1  # label maps: nearest
        return resize_to(probabilities, image.shape, order=order)

    def run(self, series: PluginInput) -> Findings:
        manifest = self.manifest
        pre = manifest.preprocessing
        pixels = series.pixels.astype(np.float32, copy=False)
        reorientation: Reorientation | None = None
        if manifest.input.dimensionality is Dimensionality.THREE_D:
            if series.volume is None:
                raise ValueError(
                    f"{manifest.key} needs a regular 3D volume; this series has none "
                    "(projection images, or irregular geometry such as gantry tilt)"
                )
            volume = series.volume
            if pre.orientation is not None:
                reorientation = reorient(volume.with_array(pixels), pre.orientation)
                pixels = reorientation.reoriented.array
                spacing = tuple(reorientation.reoriented.spacing)
            else:
                spacing = tuple(volume.spacing)
        if pre.window is not None:
            pixels = apply_window(pixels, pre.window)
        if pre.normalise is not None:
            pixels = normalise(pixels, pre.normalise)
        if manifest.input.dimensionality is Dimensionality.THREE_D:
            probabilities = self._infer(pixels, spacing)
            if reorientation is not None:
                probabilities = reorientation.undo(probabilities)
        else:
            frames = [self._infer(frame, series.pixel_spacing) for frame in pixels]
            probabilities = np.stack(frames, axis=1)  # (channels, frames, rows, columns)
        labels = [s.label for s in manifest.outputs.segments]
        masks = masks_from(
            probabilities,
            manifest.postprocessing.activation,
            labels,
            threshold=manifest.postprocessing.threshold,
            fractional=manifest.outputs.fractional,
        )
        segments = segments_from(
            masks, manifest.outputs, manifest.postprocessing.connected_components
        )
        return Findings(
            algorithm=AlgorithmIdentification(manifest.name, manifest.version),
            segments=segments,
        )
