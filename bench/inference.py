"""Inference throughput: ainode's OnnxRunner against a bare ``InferenceSession.run`` loop.

Both run the same ONNX model (a small convolutional segmenter built and exported here) on
the same fixed inputs, in the same process, with the same provider; rounds alternate between
the two so drift (thermal, other load) hits both alike. The figure that matters is the ratio
ainode / bare (target ≥ 0.95): the runner must add nothing measurable to a model call.

    python bench/inference.py                      # CPU
    python bench/inference.py --provider cuda      # on a machine with a GPU
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.api import Device, DeviceKind
from models.runners.onnx import CPU_PROVIDER, CUDA_PROVIDER, OnnxRunner


class Segmenter(torch.nn.Module):
    """Three 3×3 convolutions, 1 → 16 → 16 → 3 channels: a tiny stand-in for a U-Net."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(1, 16, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(16, 16, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(16, 3, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def export(path: Path, size: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Segmenter().eval(),
            (torch.zeros(1, 1, size, size),),
            str(path),
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )


def rate(call: object, seconds: float) -> float:
    """Calls per second of ``call`` over about ``seconds``."""
    count = 0
    started = time.perf_counter()
    while True:
        call()  # type: ignore[operator]
        count += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return count / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--provider", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--size", type=int, default=256, help="image rows = columns")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds per side")
    parser.add_argument("--seconds", type=float, default=1.5, help="length of one round")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        model = Path(folder) / "segmenter.onnx"
        export(model, args.size)
        inputs = {
            "image": np.random.default_rng(0)
            .normal(size=(args.batch, 1, args.size, args.size))
            .astype(np.float32)
        }
        if args.provider == "cuda":
            device = Device(DeviceKind.CUDA, 0)
            providers = [CUDA_PROVIDER, CPU_PROVIDER]
        else:
            device = Device()
            providers = [CPU_PROVIDER]
        bare = ort.InferenceSession(str(model), providers=providers)
        runner = OnnxRunner(model, device)
        if bare.get_providers()[0] != runner.active_provider:
            print(
                f"providers differ: bare {bare.get_providers()[0]}, "
                f"ainode {runner.active_provider}",
                file=sys.stderr,
            )
            return 1
        np.testing.assert_allclose(
            runner.run(inputs)[0], bare.run(None, inputs)[0], rtol=1e-5, atol=1e-5
        )
        for _ in range(3):  # warm both (CUDA kernels, allocator arenas)
            bare.run(None, inputs)
            runner.run(inputs)

        bare_rates, ainode_rates = [], []
        for _ in range(args.rounds):
            bare_rates.append(rate(lambda: bare.run(None, inputs), args.seconds))
            ainode_rates.append(rate(lambda: runner.run(inputs), args.seconds))

    bare_rate = statistics.median(bare_rates)
    ainode_rate = statistics.median(ainode_rates)
    images = args.batch
    print(f"provider      {runner.active_provider} ({runner.reason})")
    print(f"model         3-layer conv segmenter, input {args.batch}×1×{args.size}×{args.size}")
    print(f"bare session  {bare_rate:8.2f} runs/s  {bare_rate * images:9.1f} images/s")
    print(f"ainode runner {ainode_rate:8.2f} runs/s  {ainode_rate * images:9.1f} images/s")
    print(f"ratio ainode/bare = {ainode_rate / bare_rate:.3f} (target >= 0.95)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
