"""Production versus shadow: what is kept of a plugin's findings, and how two compare.

A shadow route runs a candidate plugin (or version) on the same series as a production
route, and its results go only to shadow destinations. The node keeps both plugins' findings
(``node.shadow``, table ``shadow_findings``) in the form made here: a JSON summary of
segments, measurements and evaluations (``findings_summary``) and the segment masks in a
compressed ``.npz`` (``save_masks``; a boxed mask as its box, with ``s{i}_origin`` and
``s{i}_volume_shape``). ``agreement`` pairs production and shadow records per
series and computes the Dice coefficient of segments (matched by segment type code, then by
key) and the difference of measurements (matched by finding and concept); ``ainode shadow
report`` prints it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.api import Findings, MaskBox, Measurement

__all__ = [
    "MeasurementDifference",
    "RecordedFindings",
    "SegmentAgreement",
    "SeriesAgreement",
    "ShadowReport",
    "agreement",
    "dice",
    "findings_summary",
    "save_masks",
]


def dice(a: np.ndarray | MaskBox, b: np.ndarray | MaskBox) -> float:
    """Dice coefficient of two masks, full or boxed (fractional masks are thresholded at
    0.5); 1.0 if both are empty. Boxes are compared where they overlap, never expanded."""
    first, second = MaskBox.of(a), MaskBox.of(b)
    if first.volume_shape != second.volume_shape:
        raise ValueError(f"masks differ in shape: {first.volume_shape} vs {second.volume_shape}")
    total = int(np.count_nonzero(first.binary)) + int(np.count_nonzero(second.binary))
    if total == 0:
        return 1.0
    shared = [
        slice(max(p.start, q.start), min(p.stop, q.stop))
        for p, q in zip(first.slices, second.slices, strict=True)
    ]
    if any(s.start >= s.stop for s in shared):
        return 0.0

    def within(box: MaskBox) -> np.ndarray:
        return box.binary[
            tuple(slice(s.start - o, s.stop - o) for s, o in zip(shared, box.origin, strict=True))
        ]

    return 2.0 * int(np.count_nonzero(within(first) & within(second))) / total


def _code_key(code: Any) -> str:
    return f"{code.scheme_designator}:{code.value}"


def _measurement_row(owner: str, m: Measurement) -> dict[str, Any]:
    return {
        "owner": owner,
        "concept": _code_key(m.concept),
        "meaning": m.concept.meaning,
        "value": m.value,
        "unit": m.unit.value,
    }


def findings_summary(findings: Findings, masks_file: str | None) -> dict[str, Any]:
    """What is kept of ``findings`` for a later comparison (JSON-ready); ``masks_file`` names
    the ``.npz`` that ``save_masks`` wrote, None when there are no segments."""
    measurements = [_measurement_row("study", m) for m in findings.study_measurements]
    evaluations = [
        {"owner": "study", "concept": _code_key(e.concept), "value": _code_key(e.value)}
        for e in findings.study_evaluations
    ]
    for finding in findings.findings:
        owner = finding.tracking_id
        if finding.segment_key is not None:
            owner = _code_key(findings.segment(finding.segment_key).type)
        measurements += [_measurement_row(owner, m) for m in finding.measurements]
        evaluations += [
            {"owner": owner, "concept": _code_key(e.concept), "value": _code_key(e.value)}
            for e in finding.evaluations
        ]
    return {
        "masks": masks_file,
        "segments": [
            {"key": s.key, "label": s.label, "type": _code_key(s.type)} for s in findings.segments
        ],
        "measurements": measurements,
        "evaluations": evaluations,
    }


def save_masks(findings: Findings, path: Path) -> None:
    """The segment masks of ``findings``, in segment order, as one compressed ``.npz``."""
    arrays: dict[str, np.ndarray] = {}
    for i, segment in enumerate(findings.segments):
        arrays[f"s{i}"] = segment.box.array
        if isinstance(segment.mask, MaskBox):
            arrays[f"s{i}_origin"] = np.asarray(segment.mask.origin, np.int64)
            arrays[f"s{i}_volume_shape"] = np.asarray(segment.mask.volume_shape, np.int64)
    np.savez_compressed(path, **arrays)


def _stored_mask(stored: Any, i: int) -> np.ndarray | MaskBox:
    """Mask ``i`` of a ``save_masks`` file (full-volume in files written before boxes)."""
    if f"s{i}_origin" not in stored:
        return stored[f"s{i}"]
    origin = tuple(int(v) for v in stored[f"s{i}_origin"])
    volume_shape = tuple(int(v) for v in stored[f"s{i}_volume_shape"])
    return MaskBox(stored[f"s{i}"], origin, volume_shape)  # type: ignore[arg-type]


@dataclass(frozen=True)
class RecordedFindings:
    """One kept record: which job's plugin version ran on which series, in which mode."""

    job_id: int
    series_instance_uid: str
    plugin: str
    plugin_version: str
    mode: str  # production | shadow
    summary: Mapping[str, Any]  # findings_summary's


@dataclass(frozen=True)
class SegmentAgreement:
    label: str
    dice: float | None  # None: the segment exists on one side only


@dataclass(frozen=True)
class MeasurementDifference:
    owner: str
    meaning: str
    unit: str
    production: float | None
    shadow: float | None

    @property
    def difference(self) -> float | None:
        if self.production is None or self.shadow is None:
            return None
        return self.shadow - self.production


@dataclass(frozen=True)
class SeriesAgreement:
    series_instance_uid: str
    production: str  # plugin@version (job id)
    shadow: str
    segments: tuple[SegmentAgreement, ...]
    measurements: tuple[MeasurementDifference, ...]
    evaluations_agree: int
    evaluations_total: int


@dataclass(frozen=True)
class ShadowReport:
    series: tuple[SeriesAgreement, ...]

    @property
    def mean_dice(self) -> float | None:
        values = [s.dice for a in self.series for s in a.segments if s.dice is not None]
        return None if not values else float(np.mean(values))

    def format(self) -> str:
        if not self.series:
            return "no series has both production and shadow findings yet"
        lines = []
        for agreement in self.series:
            lines.append(
                f"series {agreement.series_instance_uid}: production {agreement.production} "
                f"vs shadow {agreement.shadow}"
            )
            for segment in agreement.segments:
                value = "only on one side" if segment.dice is None else f"{segment.dice:.3f}"
                lines.append(f"  segment {segment.label:<32} Dice {value}")
            for m in agreement.measurements:
                production = "-" if m.production is None else f"{m.production:.4g}"
                shadow = "-" if m.shadow is None else f"{m.shadow:.4g}"
                difference = "" if m.difference is None else f"  Δ {m.difference:+.4g}"
                lines.append(
                    f"  measurement {m.meaning:<28} {production} vs {shadow} [{m.unit}]{difference}"
                )
            if agreement.evaluations_total:
                lines.append(
                    f"  evaluations agree {agreement.evaluations_agree}/"
                    f"{agreement.evaluations_total}"
                )
        mean = self.mean_dice
        lines.append(
            f"{len(self.series)} series compared"
            + ("" if mean is None else f"; mean Dice {mean:.3f}")
        )
        return "\n".join(lines)


def _masks(
    summary: Mapping[str, Any], masks_dir: Path
) -> dict[str, tuple[str, np.ndarray | MaskBox]]:
    """Segment type code (or key) → (label, mask)."""
    if not summary["masks"]:
        return {}
    with np.load(masks_dir / summary["masks"]) as stored:
        return {
            s["type"]: (s["label"], _stored_mask(stored, i))
            for i, s in enumerate(summary["segments"])
        }


def _compare(
    production: RecordedFindings, shadow: RecordedFindings, masks_dir: Path
) -> SeriesAgreement:
    p_summary, s_summary = production.summary, shadow.summary
    p_masks, s_masks = _masks(p_summary, masks_dir), _masks(s_summary, masks_dir)
    segments = []
    for key in sorted(set(p_masks) | set(s_masks)):
        if key in p_masks and key in s_masks:
            segments.append(
                SegmentAgreement(p_masks[key][0], dice(p_masks[key][1], s_masks[key][1]))
            )
        else:
            segments.append(SegmentAgreement((p_masks.get(key) or s_masks[key])[0], None))

    def by_key(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
        return {(r["owner"], r["concept"]): r for r in rows}

    p_meas, s_meas = by_key(p_summary["measurements"]), by_key(s_summary["measurements"])
    measurements = []
    for key in sorted(set(p_meas) | set(s_meas)):
        reference = p_meas.get(key) or s_meas[key]
        measurements.append(
            MeasurementDifference(
                owner=key[0],
                meaning=reference["meaning"],
                unit=reference["unit"],
                production=p_meas[key]["value"] if key in p_meas else None,
                shadow=s_meas[key]["value"] if key in s_meas else None,
            )
        )
    p_eval, s_eval = by_key(p_summary["evaluations"]), by_key(s_summary["evaluations"])
    shared = set(p_eval) & set(s_eval)
    agree = sum(p_eval[k]["value"] == s_eval[k]["value"] for k in shared)
    return SeriesAgreement(
        series_instance_uid=production.series_instance_uid,
        production=f"{production.plugin}@{production.plugin_version} (job {production.job_id})",
        shadow=f"{shadow.plugin}@{shadow.plugin_version} (job {shadow.job_id})",
        segments=tuple(segments),
        measurements=tuple(measurements),
        evaluations_agree=agree,
        evaluations_total=len(set(p_eval) | set(s_eval)),
    )


def agreement(
    records: Iterable[RecordedFindings], masks_dir: Path, *, plugin: str | None = None
) -> ShadowReport:
    """Compare the latest findings of each shadow plugin with production on the same series:
    the same plugin's production version where there is one, else the latest production.
    ``records`` come oldest first."""
    latest: dict[tuple[str, str, str], RecordedFindings] = {}
    latest_production: dict[str, RecordedFindings] = {}
    for record in records:
        latest[(record.series_instance_uid, record.mode, record.plugin)] = record
        if record.mode == "production":
            latest_production[record.series_instance_uid] = record
    agreements = []
    for (series, mode, name), shadow in sorted(latest.items()):
        if mode != "shadow":
            continue
        # the same plugin's production version if there is one, else the series' latest
        production = latest.get((series, "production", name)) or latest_production.get(series)
        if production is None:
            continue
        if plugin is not None and plugin not in (production.plugin, shadow.plugin):
            continue
        agreements.append(_compare(production, shadow, Path(masks_dir)))
    return ShadowReport(tuple(agreements))
