"""``TritonRunner``: a model served by NVIDIA Triton, called with ``tritonclient``.

It has the interface of ``OnnxRunner`` (``input_names``, ``output_names``,
``run(inputs) -> list[np.ndarray]``), so a plugin or the generic manifest-driven plugin runs
the same pre- and post-processing whichever serves the tensors. A batch larger than
``max_batch`` is sent in several requests. A server that cannot be reached, a model that is
not ready or a request that fails raises ``PluginError`` (retried with backoff, as a busy GPU
box deserves); ``triton_problems`` is what ``ainode plugins check`` reports.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from models.api import Device
from models.errors import PluginError
from models.manifest_checks import CheckProblem, Severity
from models.runners.triton_spec import TensorSpec, TritonProtocol, TritonSpec

__all__ = ["TritonRunner", "triton_problems"]

log = logging.getLogger(__name__)


def _client_module(protocol: TritonProtocol) -> Any:
    if protocol is TritonProtocol.GRPC:
        import tritonclient.grpc as module
    else:
        import tritonclient.http as module
    return module


def _client(spec: TritonSpec) -> Any:
    module = _client_module(spec.protocol)
    if spec.protocol is TritonProtocol.GRPC:
        return module.InferenceServerClient(spec.url)
    return module.InferenceServerClient(
        spec.url, connection_timeout=spec.timeout_s, network_timeout=spec.timeout_s
    )


def _where(spec: TritonSpec) -> str:
    version = f" version {spec.version}" if spec.version else ""
    return f"model {spec.model!r}{version} on {spec.protocol.value}://{spec.url}"


class TritonRunner:
    """One client of one served model; the server owns the device."""

    def __init__(self, spec: TritonSpec, device: Device) -> None:
        self.spec = spec
        self.device = device  # where the node's slot is; the server places the model itself
        self._module = _client_module(spec.protocol)
        self._client = _client(spec)
        self.input_names = tuple(t.name for t in spec.inputs)
        self.output_names = tuple(t.name for t in spec.outputs)
        try:
            ready = self._client.is_model_ready(spec.model, spec.version)
        except Exception as exc:
            raise PluginError(f"Triton unreachable for {_where(spec)}: {_reason(exc)}") from exc
        if not ready:
            raise PluginError(f"{_where(spec)} is not READY")
        log.info("triton %s: ready", _where(spec))

    def _inputs(self, arrays: dict[str, np.ndarray], start: int, stop: int) -> list[Any]:
        built = []
        for tensor in self.spec.inputs:
            if tensor.name not in arrays:
                raise PluginError(f"{_where(self.spec)}: no array for input {tensor.name!r}")
            part = np.ascontiguousarray(arrays[tensor.name][start:stop], dtype=tensor.dtype)
            item = self._module.InferInput(tensor.name, list(part.shape), tensor.datatype)
            item.set_data_from_numpy(part)
            built.append(item)
        return built

    def _request(self, inputs: list[Any]) -> Any:
        outputs = [self._module.InferRequestedOutput(t.name) for t in self.spec.outputs]
        kwargs: dict[str, Any] = {"model_version": self.spec.version, "outputs": outputs}
        if self.spec.protocol is TritonProtocol.GRPC:
            kwargs["client_timeout"] = self.spec.timeout_s
        try:
            return self._client.infer(self.spec.model, inputs, **kwargs)
        except Exception as exc:
            message = f"Triton request to {_where(self.spec)} failed: {_reason(exc)}"
            raise PluginError(message) from exc

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The outputs in the manifest's order, the batch split into ``max_batch`` requests."""
        total = len(next(iter(inputs.values())))
        parts: list[list[np.ndarray]] = [[] for _ in self.spec.outputs]
        for start in range(0, total, self.spec.max_batch):
            stop = min(total, start + self.spec.max_batch)
            result = self._request(self._inputs(inputs, start, stop))
            for index, tensor in enumerate(self.spec.outputs):
                parts[index].append(result.as_numpy(tensor.name))
        return [np.concatenate(chunks) for chunks in parts]


def _reason(exc: Exception) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def _metadata(client: Any, spec: TritonSpec) -> dict[str, Any]:
    metadata = client.get_model_metadata(spec.model, spec.version)
    if not isinstance(metadata, dict):  # grpc answers a protobuf message
        from google.protobuf.json_format import MessageToDict

        metadata = MessageToDict(metadata, preserving_proto_field_name=True)
    return metadata


def _tensor_problems(kind: str, declared: tuple[TensorSpec, ...], served: list[dict]) -> list[str]:
    by_name = {t["name"]: t for t in served}
    problems = []
    for tensor in declared:
        found = by_name.get(tensor.name)
        if found is None:
            names = ", ".join(sorted(by_name)) or "none"
            problems.append(
                f"{kind} {tensor.name!r} is not an {kind} of the model (it has {names})"
            )
            continue
        if found["datatype"] != tensor.datatype:
            problems.append(
                f"{kind} {tensor.name!r} is {found['datatype']} on the server, the manifest says "
                f"{tensor.datatype}"
            )
        shape = [int(d) for d in found.get("shape", [])]
        if len(shape) == len(tensor.shape) + 1:
            shape = shape[1:]  # the server lists the batch axis
        if len(shape) != len(tensor.shape) or any(
            a != b and -1 not in (a, b) for a, b in zip(shape, tensor.shape, strict=False)
        ):
            problems.append(
                f"{kind} {tensor.name!r} has shape {shape} on the server (without the batch axis), "
                f"the manifest says {list(tensor.shape)}"
            )
    return problems


def triton_problems(spec: TritonSpec) -> list[CheckProblem]:
    """Server reachable, model READY, and its tensors as the manifest declares them."""
    found: list[CheckProblem] = []
    try:
        client = _client(spec)
        live = client.is_server_live()
    except Exception as exc:
        return [CheckProblem(Severity.ERROR, f"Triton at {spec.url} unreachable: {_reason(exc)}")]
    if not live:
        return [CheckProblem(Severity.ERROR, f"Triton at {spec.url} answers but is not live")]
    found.append(
        CheckProblem(Severity.INFO, f"Triton at {spec.protocol.value}://{spec.url} is live")
    )
    try:
        ready = client.is_model_ready(spec.model, spec.version)
    except Exception as exc:
        ready = False
        log.debug("is_model_ready failed: %s", exc)
    if not ready:
        return [*found, CheckProblem(Severity.ERROR, f"{_where(spec)} is not loaded (not READY)")]
    try:
        metadata = _metadata(client, spec)
    except Exception as exc:
        return [
            *found,
            CheckProblem(Severity.ERROR, f"no metadata for {_where(spec)}: {_reason(exc)}"),
        ]
    problems = _tensor_problems("input", spec.inputs, metadata.get("inputs", []))
    problems += _tensor_problems("output", spec.outputs, metadata.get("outputs", []))
    found += [CheckProblem(Severity.ERROR, f"{_where(spec)}: {p}") for p in problems]
    if not problems:
        found.append(CheckProblem(Severity.INFO, f"{_where(spec)} is READY, tensors as declared"))
    return found
