"""A Triton-served model against the same model in ONNX Runtime in this process.

    python bench/triton.py [--requests 200]

The model is dx-chest's network (input 1×96×96 float32), served by a real Triton server
(PyTriton's bundled tritonserver, ``scripts/install-triton.sh``) whose Python backend runs it
in ONNX Runtime on the CPU, on loopback. Printed per way and batch size: requests per second
and the median and 95th-percentile latency, with the ratio to the local runner; then the
whole dx-chest plugin per study, local and served.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import numpy as np
from plugin_support import PLUGINS, dx_chest_phantoms
from test_triton_runner import TENSORS, served_dx_chest
from triton_support import TritonServer

from models.api import Device
from models.manifest import load_manifest
from models.runners.onnx import OnnxRunner
from models.runners.python import instantiate
from models.runners.triton import TritonRunner
from models.runners.triton_spec import TritonSpec

MODEL = PLUGINS / "dx_chest" / "model.onnx"


def _latencies(run, batch: np.ndarray, requests: int) -> list[float]:
    run(batch)  # warm-up
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        run(batch)
        times.append(time.perf_counter() - started)
    return times


def _row(name: str, batch: int, times: list[float], reference: float) -> str:
    p50 = statistics.median(times)
    p95 = sorted(times)[int(0.95 * (len(times) - 1))]
    return (
        f"{name:<12} batch {batch:>2}  {1 / p50:8.1f} req/s  p50 {p50 * 1000:7.2f} ms  "
        f"p95 {p95 * 1000:7.2f} ms  ratio {p50 / reference:5.2f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="bench-triton-") as temp,
        TritonServer.start(MODEL, "dx-chest", Path(temp)) as server,
    ):
        local = OnnxRunner(MODEL, Device())
        served = {
            protocol: TritonRunner(
                TritonSpec(
                    url=server.http_url if protocol == "http" else server.grpc_url,
                    protocol=protocol,
                    model="dx-chest",
                    max_batch=16,
                    **TENSORS,
                ),
                Device(),
            )
            for protocol in ("http", "grpc")
        }
        rng = np.random.default_rng(0)
        print(f"dx-chest network, {args.requests} requests each, CPU, loopback")
        for size in (1, 8):
            batch = rng.random((size, 1, 96, 96), dtype=np.float32)
            local_times = _latencies(lambda b: local.run({"image": b}), batch, args.requests)
            reference = statistics.median(local_times)
            print(_row("onnxruntime", size, local_times, reference))
            for protocol, runner in served.items():
                times = _latencies(lambda b, r=runner: r.run({"image": b}), batch, args.requests)
                print(_row(f"triton {protocol}", size, times, reference))
        studies = dx_chest_phantoms(Path(temp) / "cxr")
        plugins = {"local": instantiate(load_manifest(PLUGINS / "dx_chest"))}
        plugins["triton grpc"] = instantiate(
            load_manifest(served_dx_chest(Path(temp) / "served", server.grpc_url, "grpc"))
        )
        print("\nwhole plugin per study (4 phantom radiographs, best of 3 rounds)")
        best = {}
        for name, plugin in plugins.items():
            plugin.load(Device())
            plugin.run(studies[0])
            rounds = []
            for _ in range(3):
                started = time.perf_counter()
                for series in studies:
                    plugin.run(series)
                rounds.append((time.perf_counter() - started) / len(studies))
            best[name] = min(rounds)
        for name, seconds in best.items():
            print(
                f"{name:<12} {seconds * 1000:8.1f} ms/study  ratio {seconds / best['local']:5.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
