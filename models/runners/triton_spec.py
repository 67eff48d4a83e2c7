"""The ``triton:`` section of a ``plugin.yaml``: a model served by NVIDIA Triton.

Example (the plugin's own pre- and post-processing, or its entry class, run in the node; only
the tensors travel)::

    runner: triton
    entry: plugin:DxChestPlugin       # optional, as for onnx
    triton:
      url: triton.hospital.example:8001
      protocol: grpc                  # grpc | http
      model: dx-chest
      version: "3"                    # "" (default): the server's newest
      inputs:  [{name: image,  datatype: FP32, shape: [1, 96, 96]}]    # without the batch axis
      outputs: [{name: logits, datatype: FP32, shape: [3, 96, 96]}]
      max_batch: 16                   # frames or tiles per request
      timeout_s: 30

``ainode plugins check`` compares these with the server's model metadata.
"""

from __future__ import annotations

import re
from enum import StrEnum

import numpy as np
from pydantic import Field, field_validator

from models.manifest_processing import ManifestSection

__all__ = ["DATATYPES", "TensorSpec", "TritonProtocol", "TritonSpec"]

# Triton's datatype names and the numpy dtype of each
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "UINT16": np.dtype(np.uint16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}


class TritonProtocol(StrEnum):
    HTTP = "http"
    GRPC = "grpc"


class TensorSpec(ManifestSection):
    """One input or output tensor, without the batch axis (-1: any length)."""

    name: str = Field(min_length=1)
    datatype: str
    shape: tuple[int, ...]

    @field_validator("datatype")
    @classmethod
    def _known(cls, value: str) -> str:
        value = value.upper()
        if value not in DATATYPES:
            raise ValueError(f"datatype {value!r} is not one of {', '.join(DATATYPES)}")
        return value

    @field_validator("shape")
    @classmethod
    def _dims(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(d == 0 or d < -1 for d in value):
            raise ValueError(f"shape {list(value)}: dimensions are positive, or -1 for any")
        return value

    @property
    def dtype(self) -> np.dtype:
        return DATATYPES[self.datatype]


class TritonSpec(ManifestSection):
    url: str
    protocol: TritonProtocol = TritonProtocol.HTTP
    model: str = Field(min_length=1)
    version: str = ""
    inputs: tuple[TensorSpec, ...] = Field(min_length=1)
    outputs: tuple[TensorSpec, ...] = Field(min_length=1)
    max_batch: int = Field(8, ge=1, le=4096)
    timeout_s: float = Field(60, gt=0)

    @field_validator("url")
    @classmethod
    def _host_port(cls, value: str) -> str:
        value = value.strip()
        if value.startswith(("http://", "https://", "grpc://")):
            raise ValueError(f"url {value!r}: write host:port; protocol says http or grpc")
        if not re.fullmatch(r"[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5}", value):
            raise ValueError(f"url {value!r} must be host:port, e.g. triton.example:8001")
        return value

    @field_validator("version", mode="before")
    @classmethod
    def _text(cls, value: object) -> object:
        return str(value) if isinstance(value, int) else value
