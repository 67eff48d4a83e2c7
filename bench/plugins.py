"""Reference plugins on their large phantoms: CPU (or GPU) time per run.

    python bench/plugins.py                      # every plugin benchmarked here, CPU
    python bench/plugins.py dx-chest --device cuda

Each benchmark writes its large phantom as DICOM, loads it with ``models.loading`` as the
node does, warms the plugin up once, then times repeated runs. The reference measured in the
same process is the load of the same series (decode + modality LUT), so the printed ratio
(plugin run / series load) compares across machines better than raw seconds.
Add a plugin by writing a function that returns its ``Timing`` rows and listing it in
``BENCHMARKS``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.api import Device, DeviceKind
from models.devices import GpuSlots
from models.loading import load_plugin_input
from models.manifest import load_manifest
from models.runtime import PluginHost, catalog_of

REPO = Path(__file__).resolve().parent.parent
PLUGINS = REPO / "models" / "plugins"


@dataclass(frozen=True)
class Timing:
    plugin: str
    case: str
    load_s: float
    run_s: float

    @property
    def ratio(self) -> float:
        return self.run_s / self.load_s


def _median_seconds(action: Callable[[], object], repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def bench_dx_chest(device: Device, repeats: int) -> list[Timing]:
    """dx-chest and the dx-chest-report chain on a 2560×2048 DX (0.168 mm, 430×344 mm)."""
    from models.phantoms.chest_xray import ChestXrayAnatomy, RadiographKind, make_chest_xray

    manifests = [load_manifest(PLUGINS / "dx_chest"), load_manifest(PLUGINS / "dx_chest_report")]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        slots = GpuSlots(
            [device.index] if device.kind is DeviceKind.CUDA else [], 1, Path(folder) / "slots"
        )
        host = PluginHost(catalog_of(manifests), slots)
        for kind in (RadiographKind.DX, RadiographKind.CR):
            anatomy = ChestXrayAnatomy(
                ctr=0.55, rows=2560, columns=2048, field_mm=(430.0, 344.0), seed=4242
            )
            written = make_chest_xray(Path(folder) / kind.value, kind=kind, anatomy=anatomy)
            series = load_plugin_input([written.path])
            load_s = _median_seconds(lambda path=written.path: load_plugin_input([path]), repeats)
            for name in ("dx-chest", "dx-chest-report"):
                host.run(name, None, series)  # warm-up: load the model
                run_s = _median_seconds(lambda n=name, s=series: host.run(n, None, s), repeats)
                rows.append(Timing(name, f"{kind.value} 2560×2048", load_s, run_s))
        host.close()
    return rows


def _bench_volume(
    folder_name: str,
    name: str,
    case: str,
    write: Callable[[Path], list[Path]],
    device: Device,
    repeats: int,
) -> list[Timing]:
    """One cross-sectional plugin on one phantom series, through the PluginHost."""
    with tempfile.TemporaryDirectory() as folder:
        paths = write(Path(folder) / "series")
        series = load_plugin_input(paths)
        load_s = _median_seconds(lambda: load_plugin_input(paths), repeats)
        slots = GpuSlots(
            [device.index] if device.kind is DeviceKind.CUDA else [], 1, Path(folder) / "slots"
        )
        host = PluginHost(catalog_of([load_manifest(PLUGINS / folder_name)]), slots)
        host.run(name, None, series)  # warm-up
        run_s = _median_seconds(lambda: host.run(name, None, series), repeats)
        host.close()
    return [Timing(name, case, load_s, run_s)]


def bench_ct_lung_nodule(device: Device, repeats: int) -> list[Timing]:
    """ct-lung-nodule on the large chest CT phantom: 300 slices of 512×512, 1 mm."""
    from models.phantoms.chest_ct import ChestCTSpec, write_chest_ct

    return _bench_volume(
        "ct_lung_nodule",
        "ct-lung-nodule",
        "CT 300×512×512",
        lambda folder: write_chest_ct(folder, ChestCTSpec.large())[1],
        device,
        repeats,
    )


def bench_mr_vessel_wall(device: Device, repeats: int) -> list[Timing]:
    """mr-vessel-wall on the large neck MR phantom: 40 slices of 384×384, 0.4 mm."""
    from models.phantoms.neck_mr import NeckMRSpec, write_neck_mr

    return _bench_volume(
        "mr_vessel_wall",
        "mr-vessel-wall",
        "MR 40×384×384",
        lambda folder: write_neck_mr(folder, NeckMRSpec.large())[1],
        device,
        repeats,
    )


BENCHMARKS: dict[str, Callable[[Device, int], list[Timing]]] = {
    "dx-chest": bench_dx_chest,
    "ct-lung-nodule": bench_ct_lung_nodule,
    "mr-vessel-wall": bench_mr_vessel_wall,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plugins", nargs="*", choices=[*BENCHMARKS, []], default=[])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    device = Device(DeviceKind(args.device))
    print("| plugin | case | series load s | plugin run s | ratio run/load |")
    print("| --- | --- | --- | --- | --- |")
    for name in args.plugins or list(BENCHMARKS):
        for timing in BENCHMARKS[name](device, args.repeats):
            print(
                f"| {timing.plugin} | {timing.case} | {timing.load_s:.3f} | {timing.run_s:.3f} "
                f"| {timing.ratio:.2f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
