"""Production versus shadow: keep both plugins' findings on a series and report agreement.

A shadow route runs a candidate plugin (or version) on the same series as a production
route, and its results go only to shadow destinations. After each such job the executor
calls ``record_if_shadowed``: when the job's series has both a production and a shadow
match in the same study version, the Findings are kept in ``shadow_findings`` (the JSON
summary of measurements and evaluations in the row; segment masks in a compressed ``.npz``
beside the database). ``agreement_report`` pairs production and shadow rows per series and
computes the Dice coefficient of segments (matched by segment type code, then by key) and
the difference of measurements (matched by finding and concept); ``ainode shadow report``
prints it.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.api import AlgorithmIdentification, Findings, Measurement
from node.db import transaction

__all__ = [
    "MeasurementDifference",
    "SegmentAgreement",
    "SeriesAgreement",
    "ShadowReport",
    "agreement_report",
    "dice",
    "masks_dir_for",
    "record_findings",
    "record_if_shadowed",
]


def masks_dir_for(data_dir: Path) -> Path:
    """Where segment masks of recorded findings live for a node with this data folder."""
    return Path(data_dir) / "shadow"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two masks (fractional masks are thresholded at 0.5); 1.0 if both
    are empty."""
    a = a >= 0.5 if a.dtype != np.bool_ else a
    b = b >= 0.5 if b.dtype != np.bool_ else b
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} vs {b.shape}")
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


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


def record_findings(
    conn: sqlite3.Connection,
    *,
    job_id: int,
    series_instance_uid: str,
    mode: str,
    findings: Findings,
    masks_dir: Path,
    product: AlgorithmIdentification | None = None,
) -> int:
    """Keep ``findings`` of one job for later comparison; returns the row id. ``product`` is
    the plugin version that ran (default: the findings' algorithm): a container product's
    findings name the vendor's algorithm, the same in two versions of its image."""
    product = product or findings.algorithm
    if mode not in ("production", "shadow"):
        raise ValueError(f"mode must be 'production' or 'shadow', got {mode!r}")
    masks_dir = Path(masks_dir)
    masks_dir.mkdir(parents=True, exist_ok=True)
    masks_file = None
    if findings.segments:
        masks_file = f"job-{job_id}.npz"
        np.savez_compressed(
            masks_dir / masks_file, **{f"s{i}": s.mask for i, s in enumerate(findings.segments)}
        )
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
    summary = {
        "masks": masks_file,
        "segments": [
            {"key": s.key, "label": s.label, "type": _code_key(s.type)} for s in findings.segments
        ],
        "measurements": measurements,
        "evaluations": evaluations,
    }
    with transaction(conn):
        cursor = conn.execute(
            "INSERT INTO shadow_findings (job_id, series_instance_uid, plugin, plugin_version, "
            "mode, summary, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                job_id,
                series_instance_uid,
                product.name,
                product.version,
                mode,
                json.dumps(summary),
                time.time(),
            ),
        )
    return int(cursor.lastrowid or 0)


def record_if_shadowed(
    conn: sqlite3.Connection,
    job_id: int,
    findings: Findings,
    masks_dir: Path,
    product: AlgorithmIdentification | None = None,
) -> bool:
    """Record the job's findings when its series is also run by a route of the other mode."""
    row = conn.execute(
        "SELECT m.study_version_id, m.series_instance_uid, m.mode FROM jobs j "
        "JOIN route_matches m ON m.id = j.route_match_id WHERE j.id = ?",
        (job_id,),
    ).fetchone()
    if row is None:
        raise ValueError(f"job {job_id} does not exist")
    modes = {
        r[0]
        for r in conn.execute(
            "SELECT DISTINCT mode FROM route_matches WHERE study_version_id = ? "
            "AND series_instance_uid = ?",
            (row["study_version_id"], row["series_instance_uid"]),
        )
    }
    if modes != {"production", "shadow"}:
        return False
    record_findings(
        conn,
        job_id=job_id,
        series_instance_uid=row["series_instance_uid"],
        mode=row["mode"],
        findings=findings,
        masks_dir=masks_dir,
        product=product,
    )
    return True


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


def _masks(summary: dict[str, Any], masks_dir: Path) -> dict[str, tuple[str, np.ndarray]]:
    """Segment type code (or key) → (label, mask)."""
    if not summary["masks"]:
        return {}
    with np.load(masks_dir / summary["masks"]) as stored:
        return {s["type"]: (s["label"], stored[f"s{i}"]) for i, s in enumerate(summary["segments"])}


def _compare(production: sqlite3.Row, shadow: sqlite3.Row, masks_dir: Path) -> SeriesAgreement:
    p_summary, s_summary = json.loads(production["summary"]), json.loads(shadow["summary"])
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
        series_instance_uid=production["series_instance_uid"],
        production=f"{production['plugin']}@{production['plugin_version']} "
        f"(job {production['job_id']})",
        shadow=f"{shadow['plugin']}@{shadow['plugin_version']} (job {shadow['job_id']})",
        segments=tuple(segments),
        measurements=tuple(measurements),
        evaluations_agree=agree,
        evaluations_total=len(set(p_eval) | set(s_eval)),
    )


def agreement_report(
    conn: sqlite3.Connection, masks_dir: Path, *, plugin: str | None = None
) -> ShadowReport:
    """Compare the latest findings of each shadow plugin with production on the same series:
    the same plugin's production version where there is one, else the latest production."""
    rows = conn.execute(
        "SELECT * FROM shadow_findings ORDER BY series_instance_uid, created_at, id"
    ).fetchall()
    latest: dict[tuple[str, str, str], sqlite3.Row] = {}
    latest_production: dict[str, sqlite3.Row] = {}
    for row in rows:
        latest[(row["series_instance_uid"], row["mode"], row["plugin"])] = row
        if row["mode"] == "production":
            latest_production[row["series_instance_uid"]] = row
    agreements = []
    for (series, mode, name), shadow in sorted(latest.items()):
        if mode != "shadow":
            continue
        # the same plugin's production version if there is one, else the series' latest
        production = latest.get((series, "production", name)) or latest_production.get(series)
        if production is None:
            continue
        if plugin is not None and plugin not in (production["plugin"], shadow["plugin"]):
            continue
        agreements.append(_compare(production, shadow, Path(masks_dir)))
    return ShadowReport(tuple(agreements))
