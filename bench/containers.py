"""Container plugins: per-study overhead of ``per-job`` and ``warm`` containers against the
same model in-process, and what starting a container costs on this machine.

    python bench/containers.py [--studies 5] [--rounds 3]

The product is the repo's dx-chest network in the mercure-style test image
(``scripts/build-test-images.py``); the reference is the same plugin in this process, on the
same phantom radiographs, in the same run. Rounds interleave the three ways, and the best
round of each is printed with its ratio to in-process. The start-up rows time
``podman run --rm <image> true`` (the engine alone) and ``python3 -c pass`` in the product
image (the engine and an interpreter), with this node's engine settings.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from container_images import test_images
from container_support import ENGINE, dx_chest_manifest

from models.api import Device, PluginInput
from models.containers.engine import EngineSettings, RunRequest
from models.containers.plugin import ContainerPlugin
from models.loading import load_plugin_input
from models.manifest import load_manifest
from models.phantoms.chest_xray import ChestXrayAnatomy, make_chest_xray
from models.runners.python import instantiate
from models.runtime import container_runtime_for

REPO = Path(__file__).resolve().parent.parent


def _studies(folder: Path, count: int) -> list[PluginInput]:
    series = []
    for index in range(count):
        anatomy = ChestXrayAnatomy(ctr=0.45 + 0.03 * index, seed=8800 + index)
        written = make_chest_xray(folder / f"s{index}", anatomy=anatomy)
        series.append(load_plugin_input([written.path]))
    return series


def _per_study(plugin, studies: list[PluginInput]) -> float:
    started = time.perf_counter()
    for series in studies:
        plugin.run(series)
    return (time.perf_counter() - started) / len(studies)


def _start_cost(runtime, image: str, command: tuple[str, ...], runs: int = 5) -> float:
    """Best of ``runs``: a container of ``image`` running ``command``, removed after."""
    times = []
    for index in range(runs):
        request = RunRequest(
            name=f"ainode-bench-{index}",
            image=image,
            labels={"ainode.owner": runtime.owner},
            mounts=(),
            environment={},
            user="65534:65534",
            network="none",
            cpus=2,
        )
        args = runtime.engine.run_command(request)[:-1]  # the image is last: replaced below
        args += ["--rm", "--entrypoint", command[0], image, *command[1:]]
        started = time.perf_counter()
        subprocess.run(args, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--studies", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    image = test_images()["dx-chest-mercure"]["image"]
    with tempfile.TemporaryDirectory(prefix="bench-containers-") as temp:
        folder = Path(temp)
        runtime = container_runtime_for(EngineSettings(**ENGINE), folder / "data")
        studies = _studies(folder, args.studies)
        in_process = instantiate(load_manifest(REPO / "models" / "plugins" / "dx_chest"))
        in_process.load(Device())
        ways = {"in-process": in_process}
        for lifecycle in ("per-job", "warm"):
            manifest = load_manifest(
                dx_chest_manifest(folder / lifecycle, image, lifecycle=lifecycle)
            )
            plugin = ContainerPlugin(manifest, runtime)
            started = time.perf_counter()
            plugin.load(Device())
            print(f"load {lifecycle:<8} {time.perf_counter() - started:6.2f} s", flush=True)
            ways[lifecycle] = plugin
        for plugin in ways.values():
            plugin.run(studies[0])  # warm-up: page cache, onnxruntime's first session
        best: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(args.rounds):
            for name, plugin in ways.items():
                best[name].append(_per_study(plugin, studies))
        for name in ("per-job", "warm"):
            ways[name].close()
        reference = min(best["in-process"])
        print(f"\n{args.studies} chest radiographs (512x512) per round, best of {args.rounds}")
        for name, times in best.items():
            print(
                f"{name:<11} {min(times) * 1000:8.0f} ms/study  (median "
                f"{statistics.median(times) * 1000:.0f})  ratio {min(times) / reference:6.2f}"
            )
        engine_only = _start_cost(runtime, image, ("true",))
        interpreter = _start_cost(runtime, image, ("python3", "-c", "pass"))
        print(f"\ncontainer start, {runtime.engine.kind.value} {runtime.engine.version()}:")
        print(f"run --rm true          {engine_only * 1000:8.0f} ms")
        print(f"run --rm python3 -c '' {interpreter * 1000:8.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
