"""A real NVIDIA Triton Inference Server (PyTriton's bundled tritonserver) serving one ONNX model
on onnxruntime's CPU provider, for the tests.

Run with the Triton venv's Python (scripts/install-triton.sh makes .cache/triton-venv): it imports
only the stdlib, numpy, onnxruntime and pytriton, never the repository's modules. Prints
``READY <name>`` once the model is bound and the server is up, then serves until SIGTERM/SIGINT.

``--also-unloaded NAME`` makes the server know a second model that is not loaded: a folder of that
name in the model repository (Triton runs in explicit model-control mode, so it stays UNAVAILABLE
with reason "unloaded"; it is listed by the repository index but never ready, and its
metadata is a 404 "unknown model" like that of a name the server has never seen).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
from pytriton.decorators import batch
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

ONNX_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
}


def tensors(args: list) -> list[Tensor]:
    """Triton tensor specs of ONNX inputs/outputs: the batch dimension dropped, dynamic dims -1."""
    specs = []
    for arg in args:
        if arg.type not in ONNX_DTYPES:
            raise SystemExit(f"unsupported ONNX element type {arg.type} of {arg.name}")
        dims = tuple(dim if isinstance(dim, int) and dim > 0 else -1 for dim in arg.shape[1:])
        specs.append(Tensor(name=arg.name, dtype=ONNX_DTYPES[arg.type], shape=dims))
    return specs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-file", type=Path, required=True)
    parser.add_argument("--model-name", required=True)
    parser.add_argument("--model-version", type=int, default=1)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--also-unloaded", metavar="NAME")
    opts = parser.parse_args()

    session = ort.InferenceSession(str(opts.model_file), providers=["CPUExecutionProvider"])
    inputs, outputs = session.get_inputs(), session.get_outputs()
    output_names = [out.name for out in outputs]
    dtypes = {arg.name: ONNX_DTYPES[arg.type] for arg in inputs}

    @batch
    def infer(**batch_inputs: np.ndarray) -> dict[str, np.ndarray]:
        feeds = {
            name: np.asarray(value, dtype=dtypes[name]) for name, value in batch_inputs.items()
        }
        return dict(zip(output_names, session.run(output_names, feeds), strict=True))

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())

    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=opts.http_port,
        grpc_address="127.0.0.1",
        grpc_port=opts.grpc_port,
        metrics_port=opts.metrics_port,
        exit_on_error=True,
    )
    # no access token on any endpoint, as a stock tritonserver: the repository index, model
    # control and statistics APIs answer like they do in a deployment
    triton = Triton(config=config, security_config=TritonSecurityConfig(restricted_endpoints=[]))
    try:
        triton.bind(
            model_name=opts.model_name,
            model_version=opts.model_version,
            infer_func=infer,
            inputs=tensors(inputs),
            outputs=tensors(outputs),
            config=ModelConfig(max_batch_size=opts.max_batch_size),
            strict=True,
        )
        triton.run()  # starts tritonserver, loads the bound model, returns once it is ready
        if opts.also_unloaded:
            # explicit model control: a repository folder Triton lists but never loads
            store = Path(triton._triton_server_config["model_repository"])
            (store / opts.also_unloaded / "1").mkdir(parents=True, exist_ok=True)
        print(f"READY {opts.model_name}", flush=True)
        while not stop.wait(1.0):
            if not triton.is_alive() and not stop.wait(1.0):  # a SIGTERM to the group races
                print("tritonserver died", file=sys.stderr, flush=True)
                return 1
    finally:
        # pytriton's stop (unload, stop tritonserver, clean its workspace) can hang when the
        # group's SIGTERM took its helper processes first; bounded, the caller kills the rest
        stopper = threading.Thread(target=triton.stop, daemon=True)
        stopper.start()
        stopper.join(15.0)
        if stopper.is_alive():
            os._exit(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
