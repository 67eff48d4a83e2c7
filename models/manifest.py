"""``plugin.yaml``: what a plugin is, what it accepts and what it needs, validated at load time.

A manifest sits in the plugin's own folder beside its model file. Loading one checks the
schema (every section forbids unknown keys, so a typo is an error that names the field);
``check_manifest`` (``models.manifest_checks``) goes further and checks the things a schema
cannot: the model file exists and matches its sha256, the entry module exists, the codes are
known to pydicom's code dictionaries, and an isolated interpreter is executable.

Example (every section but name/version/runner is optional)::

    name: dx-chest                  # lowercase-dashed
    version: 1.0.0
    description: Lung fields on chest radiographs
    runner: onnx                    # onnx | torchscript | python | container (an OCI image:
                                    # models.containers.spec) | triton (a served model:
                                    # models.runners.triton_spec)
    entry: plugin:DxChestPlugin     # "<module file in the plugin dir>:<class>", built as
                                    # Class(manifest); optional for onnx/torchscript, where the
                                    # generic manifest-driven plugin runs the model
    model: {file: model.onnx, sha256: 3f5a...}
    input: {modalities: [CR, DX], dimensionality: 2d, needs_spacing: true}   # see InputSpec
    preprocessing:
      window: {center: 40, width: 400}           # clip to the window, scale to [0, 1]
      normalise: {mode: zscore}                  # zscore | minmax | fixed (mean, std)
      resample: {spacing: [1.0, 1.0]}            # mm: (row, column) or (slice, row, column)
      orientation: LPS                           # 3d only: reorient the volume first
      size: [256, 256]                           # resize every frame/volume to this
      tiling: {size: [64, 128, 128], overlap: 0.25, blend: gaussian}   # sliding window
      layout: NCHW                               # NCHW | NHWC | NCDHW | NDHWC
      input_name: image                          # default: the model's first input
    postprocessing:
      activation: softmax                        # softmax | sigmoid | none
      threshold: 0.5                             # sigmoid: per-channel threshold
      connected_components: {min_voxels: 10, keep_largest: 2}
    outputs:
      segments:
        - label: 1                               # class index (softmax) or channel (sigmoid)
          name: Left lung
          category: {value: "123037004", scheme: SCT, meaning: Anatomical Structure}
          type: {value: "44029006", scheme: SCT, meaning: Left lung}
      fractional: false
    resources: {gpu: 1, memory_mb: 2048, cpu_fallback_on_oom: true, max_concurrent_jobs: 2}
    needs: [dx-chest]                            # run these first; their Findings arrive in
                                                 # PluginInput.prior
    python: /opt/vendor-venv/bin/python          # run in an isolated interpreter
"""

from __future__ import annotations

import os
import re
from enum import StrEnum
from pathlib import Path

import yaml
from pydantic import (
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydicom.sr.coding import Code

from models.containers.spec import ContainerSpec
from models.manifest_processing import (
    Activation,
    Blend,
    ConnectedComponents,
    Layout,
    ManifestSection,
    Normalisation,
    NormaliseMode,
    Postprocessing,
    Preprocessing,
    Resample,
    Tiling,
    Window,
)
from models.runners.triton_spec import TritonSpec
from models.vendor_spec import VendorNodeSpec

__all__ = [
    "MANIFEST_FILE",
    "Activation",
    "Blend",
    "CodeSpec",
    "ConnectedComponents",
    "Dimensionality",
    "InputSpec",
    "Layout",
    "ManifestError",
    "ModelFile",
    "Normalisation",
    "NormaliseMode",
    "Outputs",
    "PluginManifest",
    "Postprocessing",
    "Preprocessing",
    "Resample",
    "Resources",
    "RunnerKind",
    "SegmentSpec",
    "Tiling",
    "Window",
    "load_manifest",
]

MANIFEST_FILE = "plugin.yaml"
NAME_PATTERN = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
VERSION_PATTERN = re.compile(r"^\d+(\.\d+){0,2}([.+-][0-9A-Za-z.+-]+)?$")
ENTRY_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_]\w*$")


class RunnerKind(StrEnum):
    ONNX = "onnx"
    TORCHSCRIPT = "torchscript"
    PYTHON = "python"
    CONTAINER = "container"  # a vendor's OCI image (models.containers)
    TRITON = "triton"  # a model served by NVIDIA Triton (models.runners.triton)
    DICOM_NODE = "dicom-node"  # a vendor's own AI node (models.vendor_spec, node.vendors)


class Dimensionality(StrEnum):
    """2d: the model sees one frame at a time (frames are a batch); 3d: the whole volume."""

    TWO_D = "2d"
    THREE_D = "3d"


class CodeSpec(ManifestSection):
    """A coded concept as written in YAML; ``.code`` is the pydicom Code."""

    value: str
    scheme: str
    meaning: str

    @field_validator("value", "scheme", "meaning", mode="before")
    @classmethod
    def _as_text(cls, value: object) -> object:
        # YAML reads SNOMED codes such as 123037004 as integers.
        return str(value) if isinstance(value, int) else value

    @property
    def code(self) -> Code:
        return Code(self.value, self.scheme, self.meaning)


class ModelFile(ManifestSection):
    file: str
    sha256: str

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str) -> str:
        value = value.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{64}", value):
            raise ValueError("sha256 must be 64 hexadecimal digits (sha256sum of the model file)")
        return value

    @field_validator("file")
    @classmethod
    def _relative(cls, value: str) -> str:
        if Path(value).is_absolute() or ".." in Path(value).parts:
            raise ValueError("model.file must be a path inside the plugin folder")
        return value


class InputSpec(ManifestSection):
    modalities: tuple[str, ...] = ()
    dimensionality: Dimensionality = Dimensionality.TWO_D
    min_frames: int = Field(1, ge=1)
    max_pixel_spacing_mm: float | None = Field(None, gt=0)
    needs_spacing: bool = True  # refuse a series without a spacing (models.spacing decides)


class SegmentSpec(ManifestSection):
    label: int = Field(ge=1)
    name: str
    category: CodeSpec
    type: CodeSpec
    anatomic_site: CodeSpec | None = None
    color_rgb: tuple[int, int, int] | None = None

    @property
    def key(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-") or f"label-{self.label}"


class Outputs(ManifestSection):
    segments: tuple[SegmentSpec, ...] = ()
    fractional: bool = False

    @field_validator("segments")
    @classmethod
    def _unique(cls, value: tuple[SegmentSpec, ...]) -> tuple[SegmentSpec, ...]:
        labels = [s.label for s in value]
        if len(labels) != len(set(labels)):
            raise ValueError(f"segment labels must be unique, got {labels}")
        keys = [s.key for s in value]
        if len(keys) != len(set(keys)):
            raise ValueError(f"segment names must be distinct, got {[s.name for s in value]}")
        return value


class Resources(ManifestSection):
    """``gpu`` is the share of one GPU slot the plugin occupies: 0 (CPU), 0.5 or 1.
    ``max_concurrent_jobs`` caps the plugin's jobs RUNNING at once across the node's executors
    (a licence, a shared service); its other jobs wait, and other plugins' go ahead."""

    gpu: float = Field(0, ge=0, le=1)
    memory_mb: int | None = Field(None, ge=1)
    cpu_fallback_on_oom: bool = True
    max_concurrent_jobs: int | None = Field(None, description="empty = no limit")

    @field_validator("gpu")
    @classmethod
    def _slot_share(cls, value: float) -> float:
        if value not in (0, 0.25, 0.5, 1):
            raise ValueError("resources.gpu is 0, 0.25, 0.5 or 1 (the share of one GPU slot)")
        return value

    @field_validator("max_concurrent_jobs")
    @classmethod
    def _at_least_one(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError(
                f"give 1 or more jobs at once, or leave it out for no limit (got {value})"
            )
        return value


class PluginManifest(ManifestSection):
    """One plugin version. ``directory`` is the folder the manifest was read from."""

    name: str
    version: str
    description: str = ""
    runner: RunnerKind
    entry: str | None = None
    model: ModelFile | None = None
    input: InputSpec = InputSpec()
    preprocessing: Preprocessing = Preprocessing()
    postprocessing: Postprocessing = Postprocessing()
    outputs: Outputs = Outputs()
    resources: Resources = Resources()
    needs: tuple[str, ...] = ()
    python: Path | None = None
    container: ContainerSpec | None = None
    triton: TritonSpec | None = None
    vendor: VendorNodeSpec | None = None

    _directory: Path = PrivateAttr(default=Path("."))

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME_PATTERN.match(value):
            raise ValueError(f"name {value!r} must be lowercase letters, digits and dashes")
        return value

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, value: object) -> object:
        value = str(value) if isinstance(value, int | float) else value
        if isinstance(value, str) and not VERSION_PATTERN.match(value):
            raise ValueError(f"version {value!r} must look like 1.2.0")
        return value

    @field_validator("entry")
    @classmethod
    def _entry(cls, value: str | None) -> str | None:
        if value is not None and not ENTRY_PATTERN.match(value):
            raise ValueError(f"entry {value!r} must be '<module>:<Class>', e.g. plugin:MyPlugin")
        return value

    @model_validator(mode="after")
    def _coherent(self) -> PluginManifest:
        if self.runner is RunnerKind.CONTAINER:
            return self._coherent_container()
        if (self.runner is RunnerKind.DICOM_NODE) != (self.vendor is not None):
            raise ValueError("runner dicom-node and a vendor: section go together")
        if self.runner is RunnerKind.DICOM_NODE:
            extra = [k for k in ("entry", "model", "python", "triton") if getattr(self, k)]
            if extra or self.needs:
                raise ValueError(
                    f"runner dicom-node sends the series to the vendor; remove "
                    f"{', '.join(extra) or 'needs'}"
                )
            return self
        if self.container is not None:
            raise ValueError("a container: section needs runner: container")
        if (self.runner is RunnerKind.TRITON) != (self.triton is not None):
            raise ValueError("runner triton and a triton: section go together")
        if self.runner is RunnerKind.TRITON and (self.model is not None or self.python):
            raise ValueError("runner triton: the server holds the model; remove model/python")
        if self.runner is RunnerKind.PYTHON and self.entry is None:
            raise ValueError("runner python needs entry: '<module>:<Class>'")
        if self.runner not in (RunnerKind.PYTHON, RunnerKind.TRITON) and self.model is None:
            raise ValueError(f"runner {self.runner.value} needs model: {{file, sha256}}")
        if self.entry is None and not self.outputs.segments:
            raise ValueError(
                "without an entry class the generic plugin needs outputs.segments to know "
                "what the model's labels mean"
            )
        if self.name in self.needs:
            raise ValueError(f"plugin {self.name!r} cannot need itself")
        return self

    def _coherent_container(self) -> PluginManifest:
        if self.container is None:
            raise ValueError("runner container needs container: {image: name@sha256:…}")
        extra = [key for key in ("entry", "model", "python") if getattr(self, key) is not None]
        if extra:
            raise ValueError(
                f"runner container runs the image only; remove {', '.join(extra)} (the image "
                "carries its own code and model)"
            )
        if self.needs:
            raise ValueError("a container plugin cannot need other plugins (needs:)")
        return self

    @property
    def directory(self) -> Path:
        return self._directory

    @property
    def model_path(self) -> Path | None:
        return None if self.model is None else self._directory / self.model.file

    @property
    def key(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def isolated(self) -> bool:
        return self.python is not None

    def with_directory(self, directory: Path) -> PluginManifest:
        directory = Path(directory).resolve()
        update = {}
        if self.python is not None and not self.python.is_absolute():
            # normpath, not resolve: a venv's bin/python is a symlink that must stay one
            update["python"] = Path(os.path.normpath(directory / self.python))
        copy = self.model_copy(update=update)
        copy._directory = directory
        return copy


class ManifestError(Exception):
    """A plugin.yaml cannot be used; the message names the file and the field.

    ``problems`` lists each problem on its own (without the file name), for tools that show
    them one per line.
    """

    def __init__(self, path: Path, problems: list[str]) -> None:
        super().__init__(f"{path}: {'; '.join(problems)}")
        self.path = path
        self.problems = tuple(problems)


def load_manifest(path: Path) -> PluginManifest:
    """Read and validate ``path`` (a plugin.yaml or the folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_FILE
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ManifestError(path, [f"cannot read: {exc.strerror}"]) from exc
    except yaml.YAMLError as exc:
        raise ManifestError(path, [f"not valid YAML: {exc}"]) from exc
    if not isinstance(raw, dict):
        raise ManifestError(path, ["the top level must be a mapping"])
    try:
        manifest = PluginManifest.model_validate(raw)
    except ValidationError as exc:
        raise ManifestError(
            path,
            [
                f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: "
                f"{err['msg'].removeprefix('Value error, ')}"
                for err in exc.errors()
            ],
        ) from exc
    return manifest.with_directory(path.parent)
