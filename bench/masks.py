"""Memory of ct-lung-nodule's Findings: boxed masks (``MaskBox``) against full-volume masks.

    python bench/masks.py            # the large chest CT phantom: 300 slices of 512×512
    python bench/masks.py --small    # the test phantom, in seconds

Runs the plugin on the phantom, written as DICOM and loaded as the node does, and prints each
segment's mask bytes as the plugin now gives it (the box around the mask) and as it gave it
before (a full-volume bool array), then builds the SEG from both and prints the build time
and the peak of memory allocated while building it (``tracemalloc``, which numpy reports
to). The reference measured in the same run is the full-volume form; the SEGs are checked
to be the same bytes.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.api import Findings, PluginInput
from models.loading import load_plugin_input
from models.manifest import load_manifest
from models.phantoms.chest_ct import ChestCTSpec, write_chest_ct
from models.plugins.ct_lung_nodule.plugin import CtLungNodulePlugin
from node.outputs import OutputContext
from node.outputs.seg import build_segmentation
from node.shared_types import OutputKind

REPO = Path(__file__).resolve().parent.parent
MB = 1e6


def expanded(findings: Findings) -> Findings:
    """The same findings with every mask a full-volume bool array, as before boxes."""
    segments = tuple(dataclasses.replace(s, mask=s.binary) for s in findings.segments)
    return dataclasses.replace(findings, segments=segments)


def mask_bytes(findings: Findings) -> int:
    return sum(segment.box.array.nbytes for segment in findings.segments)


def timed_seg(findings: Findings, series: PluginInput) -> tuple[float, float, bytes]:
    """Seconds and peak MB allocated building the SEG, and its pixel data."""
    context = OutputContext(
        job_id="bench-masks",
        plugin_name="ct-lung-nodule",
        plugin_version="1",
        outputs=(OutputKind.SEG,),
    )
    tracemalloc.start()
    started = time.perf_counter()
    seg = build_segmentation(findings, series, context)
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return seconds, peak / MB, bytes(seg.PixelData)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="the test phantom (72×200×200)")
    args = parser.parse_args()
    spec = ChestCTSpec.small() if args.small else ChestCTSpec.large()
    with tempfile.TemporaryDirectory() as folder:
        _, paths = write_chest_ct(Path(folder), spec)
        series = load_plugin_input(paths)
    plugin = CtLungNodulePlugin(load_manifest(REPO / "models" / "plugins" / "ct_lung_nodule"))
    boxed = plugin.run(series)
    full = expanded(boxed)
    print(f"series {series.shape}, {len(boxed.segments)} segments")
    print(f"{'segment':<12} {'box':>16} {'box MB':>9} {'full MB':>9}")
    for mine, theirs in zip(boxed.segments, full.segments, strict=True):
        shape = "×".join(str(n) for n in mine.box.array.shape)
        print(
            f"{mine.key:<12} {shape:>16} {mine.box.array.nbytes / MB:>9.3f} "
            f"{theirs.box.array.nbytes / MB:>9.1f}"
        )
    nodules = [s for s in boxed.segments if s.key.startswith("nodule-")]
    nodule_bytes = sum(s.box.array.nbytes for s in nodules)
    volume_bytes = series.pixels[..., 0].size * series.pixels.shape[2]
    print(
        f"nodules: {nodule_bytes / MB:.3f} MB boxed vs {len(nodules) * volume_bytes / MB:.0f} MB "
        f"full; all masks: {mask_bytes(boxed) / MB:.1f} MB vs {mask_bytes(full) / MB:.0f} MB "
        f"(ratio {mask_bytes(full) / max(mask_bytes(boxed), 1):.0f}×)"
    )
    full_s, full_peak, full_pixels = timed_seg(full, series)
    boxed_s, boxed_peak, boxed_pixels = timed_seg(boxed, series)
    assert full_pixels == boxed_pixels, "the SEG differs between boxed and full masks"
    print(
        f"SEG build: full masks {full_s:.2f} s, peak {full_peak:.0f} MB; "
        f"boxed {boxed_s:.2f} s, peak {boxed_peak:.0f} MB (same pixel data)"
    )


if __name__ == "__main__":
    main()
