"""dx-chest-report: a draft chest radiograph report written from dx-chest's findings.

The runtime runs dx-chest first (``needs: [dx-chest]``) and hands its Findings over in
``PluginInput.prior["dx-chest"]``. The draft states each measurement group, study
measurement and qualitative evaluation dx-chest produced, once, and nothing else: it never
mentions a finding the model did not make, and it says plainly when the heart could not be
assessed. It says what the lengths rest on (which pixel spacing, which magnification), and
where dx-chest reported a length without a number (no calibrated spacing, or a value no adult
chest can have) it says so instead of printing one. A demonstrator; the text says the draft
needs a radiologist's review.

The job's results are those of the last plugin of its chain, so the returned Findings carry
dx-chest's segments and measurements forward with the report added: one job gives the SEG,
the TID 1500 SR and the text SR.
"""

from __future__ import annotations

from dataclasses import replace

from pydicom.sr.coding import Code

from models.api import (
    AlgorithmIdentification,
    Device,
    Finding,
    Findings,
    Measurement,
    PluginInput,
    QualitativeEvaluation,
    Report,
)
from models.manifest import PluginManifest
from models.spacing import spacing_in_words

__all__ = ["SOURCE_PLUGIN", "DxChestReportPlugin", "draft_report"]

SOURCE_PLUGIN = "dx-chest"
_CARDIOMEGALY = ("287272002", "SCT")
_PRESENT = {("52101004", "SCT"), ("121053", "DCM")}
_ABSENT = {("272519000", "SCT"), ("121054", "DCM")}
_INDETERMINATE = ("82334004", "SCT")
_RATIO = ("CTR", "99AINODE")
_UNITLESS = {"{ratio}", "1"}
# a length dx-chest did not give a number for, and why (PS3.16 CID 42)
_NOT_ATTEMPTED = ("114007", "DCM")  # the image has no calibrated pixel spacing
_OUT_OF_RANGE = ("114009", "DCM")  # outside what an adult chest can have
_NO_NUMBER = {
    _NOT_ATTEMPTED: "not reported",
    _OUT_OF_RANGE: "not assessed (outside the range an adult chest can have)",
}


def _key(code: Code) -> tuple[str, str]:
    return (code.value, code.scheme_designator)


def _number(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") if abs(value) < 10 else f"{value:.1f}"


def _measurement(measurement: Measurement) -> str:
    unit = measurement.unit.value
    suffix = "" if unit in _UNITLESS else f" {unit}"
    return f"{measurement.concept.meaning.lower()} {_number(measurement.value)}{suffix}"


def _evaluation(evaluation: QualitativeEvaluation) -> str:
    if _key(evaluation.value) in _NO_NUMBER:
        return f"{evaluation.concept.meaning.lower()} {_NO_NUMBER[_key(evaluation.value)]}"
    text = f"{evaluation.concept.meaning}: {evaluation.value.meaning.lower()}"
    if evaluation.confidence is not None:
        text += f" (confidence {evaluation.confidence:.2f})"
    return text


def _finding(finding: Finding) -> str:
    parts = [_measurement(m) for m in finding.measurements]
    parts += [_evaluation(e) for e in finding.evaluations]
    subject = finding.finding_type.meaning
    if finding.finding_site is not None:
        subject += f" ({finding.finding_site.meaning.lower()})"
    return f"{subject}: {', '.join(parts)}." if parts else f"{finding.tracking_id} outlined."


def _no_number(findings: Findings, reason: tuple[str, str]) -> bool:
    return any(_key(e.value) == reason for f in findings.findings for e in f.evaluations)


def _impression(findings: Findings) -> list[str]:
    measured = [
        *findings.study_measurements,
        *(m for f in findings.findings for m in f.measurements),
    ]
    ratio = next((m for m in measured if _key(m.concept) == _RATIO), None)
    ratio_text = f" (cardiothoracic ratio {_number(ratio.value)})" if ratio else ""
    lines = []
    for evaluation in findings.study_evaluations:
        if _key(evaluation.concept) == _CARDIOMEGALY and _key(evaluation.value) in _PRESENT:
            lines.append(f"Cardiomegaly{ratio_text}.")
        elif _key(evaluation.concept) == _CARDIOMEGALY and _key(evaluation.value) in _ABSENT:
            lines.append(f"No cardiomegaly{ratio_text}.")
        elif _key(evaluation.concept) == _CARDIOMEGALY and _no_number(findings, _OUT_OF_RANGE):
            lines.append(
                "Heart size not assessed: a measured width is outside the range an adult chest "
                "can have (check the image's pixel spacing), so no cardiothoracic ratio is "
                "reported."
            )
        elif _key(evaluation.concept) == _CARDIOMEGALY and _key(evaluation.value) == _INDETERMINATE:
            lines.append(
                "Heart size not assessed: the lungs and heart could not both be delineated, "
                "so no cardiothoracic ratio was measured."
            )
        else:
            lines.append(_evaluation(evaluation) + ".")
    if not lines:
        lines.append("No finding was produced by the analysis.")
    return lines


def _spacing_line(findings: Findings, series: PluginInput) -> list[str]:
    """What the lengths rest on, or why there are none; nothing when no length was made."""
    if not series.has_spacing and findings.findings:
        return [f"Lengths not reported: the image has {spacing_in_words(series)}."]
    lengths = any(m.unit.value not in _UNITLESS for f in findings.findings for m in f.measurements)
    return [f"Lengths from {spacing_in_words(series)}."] if lengths else []


def draft_report(findings: Findings, series: PluginInput) -> Report:
    """Findings and Impression text stating exactly what ``findings`` (on ``series``) holds."""
    source = f"{findings.algorithm.name} {findings.algorithm.version}"
    body = [f"Automated analysis of the frontal chest radiograph by {source}."]
    if findings.segments:
        labels = ", ".join(segment.label.lower() for segment in findings.segments)
        body.append(f"Segmented: {labels}.")
    body += [_finding(finding) for finding in findings.findings]
    body += _spacing_line(findings, series)
    body += [
        f"{m.concept.meaning}: {_number(m.value)}"
        + ("" if m.unit.value in _UNITLESS else f" {m.unit.value}")
        + "."
        for m in findings.study_measurements
    ]
    body += [_evaluation(e) + "." for e in findings.study_evaluations]
    if not (findings.findings or findings.study_measurements or findings.study_evaluations):
        body.append("No finding was produced.")
    body.append("Draft from a demonstrator model, not for clinical use: requires review.")
    return Report(findings="\n".join(body), impression="\n".join(_impression(findings)))


class DxChestReportPlugin:
    """``models.api.Plugin`` that turns dx-chest's Findings into a Report."""

    def __init__(self, manifest: PluginManifest) -> None:
        if SOURCE_PLUGIN not in manifest.needs:
            raise ValueError(
                f"{manifest.key}: the manifest must declare needs: [{SOURCE_PLUGIN}] so that "
                f"{SOURCE_PLUGIN}'s findings arrive in PluginInput.prior"
            )
        self.manifest = manifest
        self.name = manifest.name
        self.version = manifest.version

    def load(self, device: Device) -> None:
        """Nothing to load: the plugin is text generation over prior findings."""
        del device

    def run(self, series: PluginInput) -> Findings:
        prior = series.prior.get(SOURCE_PLUGIN)
        if prior is None:
            raise ValueError(
                f"{self.name} needs {SOURCE_PLUGIN}'s findings in PluginInput.prior"
                f"[{SOURCE_PLUGIN!r}]; got {sorted(series.prior)} (run it in the same job)"
            )
        return replace(
            prior,
            algorithm=AlgorithmIdentification(self.name, self.version),
            report=draft_report(prior, series),
        )
