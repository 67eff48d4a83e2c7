"""Output building speed: SEG + TID 1500 SR of a 300-slice 512x512 CT (not a test).

A chest CT of 300 single-frame 512x512 slices (headers only, as PluginInput carries them)
with the findings of a lung-nodule plugin. ``--case lungs`` (the default, what ct-lung-nodule
reports): both lungs (ellipsoids over 90 % of the slices) and 11 nodules inside them, 13
overlapping segments, 3,900 SEG frames; ``--case nodules``: 5 separate nodules (spheres of
4-12 px radius), 1,500 frames. Each nodule is a finding with volume and diameter measurements
and a qualitative evaluation, plus a study-level nodule count. Timed, in the same process,
with rounds alternating:

- ainode: ``build_outputs`` for SEG + SR, then both written to Part-10 bytes;
- reference: the straightforward highdicom call for the SEG alone -- ``Segmentation`` with
  the masks as a (frames, rows, columns, segments) bool stack, the same segment
  descriptions, ``omit_empty_frames=False`` -- written to bytes.

Printed: median seconds of both and their ratio; the target is ainode under 3 s. The
reference and the timed ainode run use the SEG as it was before the SEG options
(``EVERY_FRAME_NESTED``: every frame, uncompressed, nested segments), so the ratio stays
comparable with the earlier figures.

``--encodings``: instead, the SEG alone under each ``outputs`` SEG option set (segments,
empty frames, transfer syntax, storage class), built with ``build_outputs`` and written to
bytes: size, seconds (median of the rounds) and both as a ratio to ``EVERY_FRAME_NESTED``.

    python bench/outputs.py [--slices 300] [--rounds 3] [--case lungs|nodules] [--encodings]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import CTImageStorage, generate_uid

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from models.api import (  # noqa: E402
    AlgorithmIdentification,
    Finding,
    Findings,
    Measurement,
    PluginInput,
    QualitativeEvaluation,
    Segment,
    SourceFrame,
)
from node.output_settings import OverlappingSegments, SegTransferSyntax, SegType  # noqa: E402
from node.outputs import OutputContext, build_outputs  # noqa: E402
from node.outputs.context import SegOptions  # noqa: E402
from node.outputs.seg import source_layout  # noqa: E402
from node.shared_types import OutputKind  # noqa: E402

SIZE = 512
SPACING = 0.7
NODULES = (  # (slice fraction, row, column, radius in px)
    (0.30, 180, 150, 6),
    (0.45, 300, 360, 12),
    (0.52, 220, 330, 4),
    (0.70, 340, 170, 9),
    (0.85, 260, 260, 5),
)


def chest_ct(slices: int) -> PluginInput:
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    headers = []
    for index in range(slices):
        ds = Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Bench^P", "B1", "", "O"
        ds.StudyInstanceUID, ds.StudyID, ds.StudyDate, ds.StudyTime = study, "1", "20260101", "1200"
        ds.AccessionNumber, ds.ReferringPhysicianName = "A1", ""
        ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "CT", series, 1
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_of_reference, ""
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-SIZE * SPACING / 2, -SIZE * SPACING / 2, index * 1.0]
        ds.PixelSpacing, ds.SliceThickness = [SPACING, SPACING], 1.0
        ds.Rows = ds.Columns = SIZE
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        headers.append(ds)
    return PluginInput(
        study_instance_uid=study,
        series_instance_uid=series,
        modality="CT",
        pixels=np.zeros((slices, SIZE, SIZE), np.float32),
        sources=tuple(SourceFrame(h.SOPClassUID, h.SOPInstanceUID) for h in headers),
        pixel_spacing=(SPACING, SPACING),
        headers=tuple(headers),
    )


# Lung case, as ct-lung-nodule reports: two lungs (ellipsoids over most of the slices) and
# 11 nodules inside them, 13 segments that overlap (the nodules lie within the lungs).
LUNGS = (  # (key, centre row, centre column, half-axes rows / columns in px)
    ("right", 256, 160, 150, 90),
    ("left", 256, 352, 150, 90),
)
LUNG_NODULES = tuple(
    (0.15 + 0.07 * i, 200 + 12 * (i % 5), (130 if i % 2 else 330) + 8 * (i % 3), 3 + i % 6)
    for i in range(11)
)


def nodule_findings(source: PluginInput, lungs: bool = False) -> Findings:
    slices = source.shape[0]
    z, y, x = np.ogrid[:slices, :SIZE, :SIZE]
    segments, findings = [], []
    if lungs:
        for key, row, column, rows, columns in LUNGS:
            mask = (
                ((z - slices / 2) / (0.45 * slices)) ** 2
                + ((y - row) / rows) ** 2
                + ((x - column) / columns) ** 2
            ) <= 1
            segments.append(
                Segment(
                    f"{key}-lung",
                    f"{key.capitalize()} lung",
                    codes.SCT.AnatomicalStructure,
                    codes.SCT.Lung,
                    mask,
                )
            )
    nodules = LUNG_NODULES if lungs else NODULES
    for number, (fraction, row, column, radius) in enumerate(nodules, 1):
        center = fraction * slices
        mask = (z - center) ** 2 + (y - row) ** 2 + (x - column) ** 2 <= radius**2
        segments.append(
            Segment(
                f"n{number}",
                f"Nodule {number}",
                codes.SCT.MorphologicallyAbnormalStructure,
                codes.SCT.Nodule,
                mask,
                anatomic_site=codes.SCT.Lung,
            )
        )
        findings.append(
            Finding(
                f"Nodule {number}",
                codes.SCT.Nodule,
                codes.SCT.Lung,
                f"n{number}",
                measurements=(
                    Measurement(
                        codes.SCT.Volume,
                        float(mask.sum() * SPACING**2),
                        Code("mm3", "UCUM", "cubic millimeter"),
                    ),
                    Measurement(
                        codes.SCT.Diameter, 2 * radius * SPACING, Code("mm", "UCUM", "millimeter")
                    ),
                ),
                evaluations=(
                    QualitativeEvaluation(codes.DCM.LevelOfSignificance, codes.SCT.Moderate, 0.7),
                ),
            )
        )
    return Findings(
        algorithm=AlgorithmIdentification("ct-lung-nodule", "1.2.0"),
        segments=tuple(segments),
        findings=tuple(findings),
        study_measurements=(
            Measurement(
                codes.SCT.NumberOfLesions, len(findings), Code("{lesions}", "UCUM", "lesions")
            ),
        ),
    )


def to_bytes(dataset: Dataset) -> int:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.tell()


def ainode(findings: Findings, source: PluginInput, context: OutputContext) -> int:
    """Build and write; the split (build seconds, write seconds, CPU seconds) is kept."""
    start, cpu = time.perf_counter(), time.process_time()
    results = build_outputs(findings, source, context)
    built = time.perf_counter()
    size = sum(to_bytes(r.dataset) for r in results)
    ainode.split = (  # type: ignore[attr-defined]
        built - start,
        time.perf_counter() - built,
        time.process_time() - cpu,
    )
    return size


def reference(findings: Findings, source: PluginInput, context: OutputContext) -> int:
    built = build_outputs(findings, source, context)[0].dataset  # descriptions to reuse
    descriptions = [hd.seg.SegmentDescription.from_dataset(item) for item in built.SegmentSequence]
    start = time.perf_counter()
    seg = hd.seg.Segmentation(
        source_images=list(source_layout(source).images),
        pixel_array=np.stack([s.mask for s in findings.segments], axis=-1),
        segmentation_type="BINARY",
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=1,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="reference",
        manufacturer_model_name="reference",
        software_versions="1",
        device_serial_number="1",
        omit_empty_frames=False,
    )
    size = to_bytes(seg)
    reference.seconds = time.perf_counter() - start  # type: ignore[attr-defined]
    return size


EVERY_FRAME_NESTED = SegOptions(
    overlapping=OverlappingSegments.NESTED,
    transfer_syntax=SegTransferSyntax.EXPLICIT_VR_LITTLE_ENDIAN,
    omit_empty_frames=False,
)
NATIVE = SegTransferSyntax.EXPLICIT_VR_LITTLE_ENDIAN
J2K = SegTransferSyntax.JPEG2000_LOSSLESS
DEFLATED = SegTransferSyntax.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN
ENCODINGS: tuple[tuple[str, SegOptions], ...] = (
    ("(a) before: nested, every frame, native", EVERY_FRAME_NESTED),
    ("exclusive, every frame, native", SegOptions(transfer_syntax=NATIVE, omit_empty_frames=False)),
    ("(b) exclusive, empty frames omitted, native [default]", SegOptions()),
    (
        "(c) exclusive, every frame, JPEG 2000 Lossless",
        SegOptions(transfer_syntax=J2K, omit_empty_frames=False),
    ),
    ("(b+c) exclusive, omitted, JPEG 2000 Lossless", SegOptions(transfer_syntax=J2K)),
    (
        "(e) exclusive, every frame, deflated",
        SegOptions(transfer_syntax=DEFLATED, omit_empty_frames=False),
    ),
    ("(b+e) exclusive, omitted, deflated", SegOptions(transfer_syntax=DEFLATED)),
    (
        "(d) LABELMAP, omitted, native",
        SegOptions(seg_type=SegType.LABELMAP, transfer_syntax=NATIVE),
    ),
    *(
        (
            f"(d) LABELMAP, omitted, {name}",
            SegOptions(seg_type=SegType.LABELMAP, transfer_syntax=ts),
        )
        for name, ts in (
            ("RLE Lossless", SegTransferSyntax.RLE_LOSSLESS),
            ("JPEG-LS Lossless", SegTransferSyntax.JPEG_LS_LOSSLESS),
            ("JPEG 2000 Lossless", J2K),
        )
    ),
)


def encodings(findings: Findings, source: PluginInput, rounds: int) -> None:
    """Size and build+write seconds of the SEG under each option set, against (a)."""
    base: tuple[int, float] | None = None
    print(f"{'SEG options':56s} {'frames':>6s} {'MB':>8s} {'size':>7s} {'s':>6s} {'time':>6s}")
    for name, options in ENCODINGS:
        context = seg_context(options)
        seconds = []
        for _ in range(rounds if options.omit_empty_frames else 1):  # every-frame J2K: 30 s
            start = time.perf_counter()
            (result,) = build_outputs(findings, source, context)
            size = to_bytes(result.dataset)
            seconds.append(time.perf_counter() - start)
        median = statistics.median(seconds)
        base = base or (size, median)
        print(
            f"{name:56s} {int(result.dataset.NumberOfFrames):6d} {size / 1e6:8.2f} "
            f"{size / base[0]:7.1%} {median:6.2f} {median / base[1]:6.2f}",
            flush=True,
        )


def seg_context(options: SegOptions, outputs: tuple[OutputKind, ...] = (OutputKind.SEG,)):
    return OutputContext(
        job_id="bench",
        plugin_name="ct-lung-nodule",
        plugin_version="1.2.0",
        outputs=outputs,
        seg=options,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--case",
        choices=("lungs", "nodules"),
        default="lungs",
        help="lungs: 2 lungs + 11 nodules inside them (13 overlapping segments, as "
        "ct-lung-nodule reports); nodules: 5 separate nodules",
    )
    parser.add_argument(
        "--encodings", action="store_true", help="size and time of the SEG per SEG option set"
    )
    args = parser.parse_args()
    source = chest_ct(args.slices)
    findings = nodule_findings(source, lungs=args.case == "lungs")
    if args.encodings:
        print(
            f"{args.slices} slices {SIZE}x{SIZE}, case {args.case}: "
            f"{len(findings.segments)} segments"
        )
        encodings(findings, source, args.rounds)
        return
    both = seg_context(EVERY_FRAME_NESTED, (OutputKind.SEG, OutputKind.SR))
    seg_only = seg_context(EVERY_FRAME_NESTED)
    ainode(findings, source, both)  # warm imports and caches once
    ours, splits, theirs = [], [], []
    for _ in range(args.rounds):
        start = time.perf_counter()
        size = ainode(findings, source, both)
        ours.append(time.perf_counter() - start)
        splits.append(ainode.split)  # type: ignore[attr-defined]
        reference(findings, source, seg_only)
        theirs.append(reference.seconds)  # type: ignore[attr-defined]
    mine, ref = statistics.median(ours), statistics.median(theirs)
    build_s, write_s, cpu_s = (statistics.median(values) for values in zip(*splits, strict=True))
    print(
        f"{args.slices} slices {SIZE}x{SIZE}, case {args.case}: {len(findings.segments)} "
        f"segments, {args.rounds} rounds"
    )
    print(
        f"ainode SEG+SR build+write: {mine:.2f} s (build {build_s:.2f} s, write {write_s:.2f} s, "
        f"CPU {cpu_s:.2f} s; {size / 1e6:.1f} MB)"
    )
    print(f"reference highdicom SEG (4D bool stack) build+write: {ref:.2f} s")
    print(
        f"ratio ainode/reference: {mine / ref:.2f}   target ainode < 3 s: "
        f"{'met' if mine < 3 else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
