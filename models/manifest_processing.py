"""The ``preprocessing`` and ``postprocessing`` sections of a ``plugin.yaml``.

What the generic manifest-driven plugin (``models.runners.generic``) does to a series before
and after the model, whichever runner serves the tensors (ONNX Runtime, TorchScript, Triton).
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "Activation",
    "Blend",
    "ConnectedComponents",
    "Layout",
    "ManifestSection",
    "Normalisation",
    "NormaliseMode",
    "Postprocessing",
    "Preprocessing",
    "Resample",
    "Tiling",
    "Window",
]


class ManifestSection(BaseModel):
    """A section of plugin.yaml: unknown keys are errors (a typo names its field), frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Layout(StrEnum):
    NCHW = "NCHW"
    NHWC = "NHWC"
    NCDHW = "NCDHW"
    NDHWC = "NDHWC"

    @property
    def spatial_dims(self) -> int:
        return len(self.value) - 2


class NormaliseMode(StrEnum):
    ZSCORE = "zscore"  # per input: (x - mean) / std
    MINMAX = "minmax"  # per input: to [0, 1]
    FIXED = "fixed"  # (x - mean) / std with the manifest's mean and std


class Activation(StrEnum):
    SOFTMAX = "softmax"
    SIGMOID = "sigmoid"
    NONE = "none"


class Blend(StrEnum):
    GAUSSIAN = "gaussian"
    CONSTANT = "constant"


class Window(ManifestSection):
    center: float
    width: float = Field(gt=0)


class Normalisation(ManifestSection):
    mode: NormaliseMode = NormaliseMode.ZSCORE
    mean: float = 0.0
    std: float = Field(1.0, gt=0)


class Resample(ManifestSection):
    spacing: tuple[float, ...]

    @field_validator("spacing")
    @classmethod
    def _positive(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if len(value) not in (2, 3) or any(v <= 0 for v in value):
            raise ValueError("resample.spacing is 2 or 3 positive numbers in mm")
        return value


class Tiling(ManifestSection):
    size: tuple[int, ...]
    overlap: float = Field(0.25, ge=0, lt=1)
    blend: Blend = Blend.GAUSSIAN

    @field_validator("size")
    @classmethod
    def _positive(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if len(value) not in (2, 3) or any(v < 1 for v in value):
            raise ValueError("tiling.size is 2 or 3 positive integers")
        return value


class Preprocessing(ManifestSection):
    window: Window | None = None
    normalise: Normalisation | None = None
    resample: Resample | None = None
    orientation: str | None = None
    size: tuple[int, ...] | None = None
    tiling: Tiling | None = None
    layout: Layout = Layout.NCHW
    input_name: str | None = None
    channels: int = Field(1, ge=1, description="the frame is repeated to this many channels")

    @field_validator("orientation")
    @classmethod
    def _orientation(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.upper().replace("S", "H").replace("I", "F")  # highdicom's letters
        axes = {"L": 0, "R": 0, "P": 1, "A": 1, "H": 2, "F": 2}
        if (
            len(value) != 3
            or any(c not in axes for c in value)
            or len({axes[c] for c in value}) != 3
        ):
            raise ValueError(
                "orientation is three letters, one each of L/R, A/P and S/I (or H/F), e.g. LPS"
            )
        return value

    @model_validator(mode="after")
    def _size_or_tiling(self) -> Preprocessing:
        if self.size is not None and self.tiling is not None:
            raise ValueError(
                "give preprocessing.size (resize) or .tiling (sliding window), not both"
            )
        return self


class ConnectedComponents(ManifestSection):
    min_voxels: int = Field(0, ge=0)
    keep_largest: int | None = Field(None, ge=1)


class Postprocessing(ManifestSection):
    activation: Activation = Activation.SOFTMAX
    threshold: float = Field(0.5, gt=0, lt=1)
    connected_components: ConnectedComponents | None = None
    output_index: int = Field(0, ge=0, description="which model output holds the logits")
