"""dx-chest: lung fields and cardiac silhouette on PA chest radiographs, the cardiothoracic
ratio, and cardiomegaly present/absent with a confidence. A demonstrator, not a device.

The network (``model.onnx``, trained by ``train.py`` on phantoms) segments a 96×96 copy
of each frame; class probabilities are interpolated back to the frame's own size, so masks
have the input's full resolution. The CTR is measured on the first frame laid out as a frontal
chest (``ChestMasks.measurable``); when there is none, the result says the ratio could not be
measured (Cardiomegaly: Indeterminate) instead of guessing.

Lengths need a calibrated spacing: without one (``PluginInput.has_spacing`` false; the
manifest says ``needs_spacing: false`` so such series still get their ratio) each length is
"Measurement not attempted". A length outside what an adult chest can have is "Value out of
range", and then neither the ratio nor a cardiomegaly verdict is built on it.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from pydicom.sr.coding import Code
from scipy import ndimage

from models.api import (
    AlgorithmIdentification,
    Device,
    Finding,
    Findings,
    ImageGraphic,
    Measurement,
    PluginInput,
    QualitativeEvaluation,
    Segment,
)
from models.graphics import horizontal_extent, outline
from models.manifest import PluginManifest
from models.runners.onnx import OnnxRunner
from models.runners.tensors import tensor_runner
from models.runners.triton import TritonRunner

from .chest import (
    CARDIOMEGALY_THRESHOLD,
    PLAUSIBLE_HEART_WIDTH_MM,
    PLAUSIBLE_THORACIC_WIDTH_MM,
    ChestMasks,
    cardiomegaly_probability,
    masks_from_logits,
    measure_ctr,
    preprocess,
)

__all__ = [
    "ABSENT",
    "ANATOMICAL_STRUCTURE",
    "CARDIOMEGALY",
    "CARDIOTHORACIC_RATIO",
    "HEART",
    "HEART_WIDTH",
    "INDETERMINATE",
    "LUNG",
    "MEASUREMENT_NOT_ATTEMPTED",
    "PRESENT",
    "THORACIC_WIDTH",
    "VALUE_OUT_OF_RANGE",
    "DxChestPlugin",
]

ANATOMICAL_STRUCTURE = Code("91723000", "SCT", "Anatomical Structure")
LUNG = Code("39607008", "SCT", "Lung")
HEART = Code("80891009", "SCT", "Heart")
CARDIOMEGALY = Code("287272002", "SCT", "Cardiomegaly")
PRESENT = Code("52101004", "SCT", "Present")
ABSENT = Code("272519000", "SCT", "Absent")
INDETERMINATE = Code("82334004", "SCT", "Indeterminate")
HEART_WIDTH = Code("103355008", "SCT", "Width")
THORACIC_WIDTH = Code("11864-6", "LN", "Transverse Thoracic Diameter")
# No standard code exists for the radiographic cardiothoracic ratio; a private scheme
# ("99" prefix, PS3.16 Section 8) says so honestly rather than borrowing a wrong one.
CARDIOTHORACIC_RATIO = Code("CTR", "99AINODE", "Cardiothoracic ratio")
MILLIMETRE = Code("mm", "UCUM", "millimeter")
RATIO = Code("{ratio}", "UCUM", "ratio")
# why a length has no number (PS3.16 CID 42 Numeric Value Qualifier), as its evaluation
MEASUREMENT_NOT_ATTEMPTED = Code("114007", "DCM", "Measurement not attempted")  # no spacing
VALUE_OUT_OF_RANGE = Code("114009", "DCM", "Value out of range")  # not anatomically possible

_LATERAL_VIEWS = frozenset({"LL", "RL", "LLD", "RLD", "LAT", "LATERAL"})


class DxChestPlugin:
    """``models.api.Plugin`` for CR/DX chest radiographs; built as ``DxChestPlugin(manifest)``."""

    def __init__(self, manifest: PluginManifest) -> None:
        if manifest.model_path is None and manifest.triton is None:
            raise ValueError(f"{manifest.key}: the manifest names no model file or Triton model")
        self.manifest = manifest
        self.name = manifest.name
        self.version = manifest.version
        self._runner: OnnxRunner | TritonRunner | None = None

    def load(self, device: Device) -> None:
        self._runner = tensor_runner(self.manifest, device)  # the file, or a served copy

    def segment(self, frame: np.ndarray) -> ChestMasks:
        """Lungs and heart of one (rows, columns) frame at its own resolution."""
        if self._runner is None:
            raise RuntimeError(f"{self.name}: call load(device) before run()")
        (logits,) = self._runner.run({self._runner.input_names[0]: preprocess(frame)})
        return masks_from_logits(logits[0], frame.shape)

    def run(self, series: PluginInput) -> Findings:
        frames = series.pixels.shape[0]
        lungs = np.zeros(series.shape, dtype=bool)
        heart = np.zeros(series.shape, dtype=bool)
        measured: ChestMasks | None = None
        measured_frame = 0
        for index in range(frames):
            if self._is_lateral(series, index):
                continue
            masks = self.segment(series.pixels[index])
            lungs[index], heart[index] = masks.lungs, masks.heart
            if measured is None and masks.measurable:
                measured, measured_frame = masks, index
        algorithm = AlgorithmIdentification(self.name, self.version)
        if measured is None:
            # nothing plausible to measure: say so rather than report a meaningless ratio
            return Findings(
                algorithm=algorithm,
                study_evaluations=(QualitativeEvaluation(CARDIOMEGALY, INDETERMINATE),),
            )
        segments = (
            Segment("lungs", "Lungs", ANATOMICAL_STRUCTURE, LUNG, lungs, color_rgb=(80, 140, 255)),
            Segment("heart", "Heart", ANATOMICAL_STRUCTURE, HEART, heart, color_rgb=(255, 80, 80)),
        )
        ctr = measure_ctr(measured.lungs, measured.heart, series.pixel_spacing[1])
        ratio = round(ctr.ratio, 3)  # the value reported is the value the decision uses
        heart_line = horizontal_extent(measured.heart, measured_frame)
        thorax_line = horizontal_extent(measured.lungs | measured.heart, measured_frame)
        heart_width = _length(
            HEART_WIDTH,
            ctr.heart_width_mm,
            series.has_spacing,
            PLAUSIBLE_HEART_WIDTH_MM,
            heart_line,
        )
        thoracic_width = _length(
            THORACIC_WIDTH,
            ctr.thoracic_width_mm,
            series.has_spacing,
            PLAUSIBLE_THORACIC_WIDTH_MM,
            thorax_line,
        )
        outlines = _outlines(measured, measured_frame)
        implausible = any(
            e.value == VALUE_OUT_OF_RANGE for e in (*heart_width[1], *thoracic_width[1])
        )
        if implausible:  # the ratio and the verdict would rest on an impossible length
            heart_outline = outlines[0]
            outlines = (
                replace(heart_outline, evaluations=(*heart_width[1], *thoracic_width[1])),
                *outlines[1:],
            )
            return Findings(
                algorithm=algorithm,
                segments=segments,
                findings=outlines,
                study_evaluations=(QualitativeEvaluation(CARDIOMEGALY, INDETERMINATE),),
            )
        lengths = (*heart_width[0], *thoracic_width[0])
        # the ratio is drawn along the heart's width where no length carries the lines
        ratio_line = None if lengths else heart_line
        probability = cardiomegaly_probability(ratio)
        present = ratio > CARDIOMEGALY_THRESHOLD
        cardiothoracic = Finding(
            tracking_id="Cardiothoracic ratio",
            finding_type=HEART,
            measurements=(*lengths, Measurement(CARDIOTHORACIC_RATIO, ratio, RATIO, ratio_line)),
            evaluations=(*heart_width[1], *thoracic_width[1]),
        )
        return Findings(
            algorithm=algorithm,
            segments=segments,
            findings=(cardiothoracic, *outlines),
            study_evaluations=(
                QualitativeEvaluation(
                    CARDIOMEGALY,
                    PRESENT if present else ABSENT,
                    confidence=round(probability if present else 1 - probability, 3),
                ),
            ),
        )

    @staticmethod
    def _is_lateral(series: PluginInput, index: int) -> bool:
        if len(series.headers) != series.pixels.shape[0]:
            return False
        view = str(series.headers[index].get("ViewPosition", "") or "").upper()
        return view in _LATERAL_VIEWS


def _length(
    concept: Code,
    value_mm: float,
    has_spacing: bool,
    plausible: tuple[float, float],
    line: ImageGraphic,
) -> tuple[tuple[Measurement, ...], tuple[QualitativeEvaluation, ...]]:
    """A length with the line it spans, or, without a number, the evaluation saying why not."""
    if not has_spacing:
        return (), (QualitativeEvaluation(concept, MEASUREMENT_NOT_ATTEMPTED),)
    if not plausible[0] <= value_mm <= plausible[1]:
        return (), (QualitativeEvaluation(concept, VALUE_OUT_OF_RANGE),)
    return (Measurement(concept, round(value_mm, 1), MILLIMETRE, line),), ()


def _outlines(masks: ChestMasks, frame: int) -> tuple[Finding, ...]:
    """The heart and each lung field outlined on the measured frame (the image's left is the
    patient's right on a PA view), so a viewer draws what the ratio was measured on."""
    heart = outline(masks.heart, frame)
    found = [Finding("Heart", HEART, region=heart)] if heart is not None else []
    labelled, count = ndimage.label(masks.lungs)
    fields = sorted(
        (labelled == number for number in range(1, count + 1)),
        key=lambda field: float(np.flatnonzero(field.any(axis=0)).mean()),
    )
    names = ("Right lung", "Left lung") if len(fields) == 2 else ("Lungs",) * len(fields)
    for name, field in zip(names, fields, strict=True):
        region = outline(field, frame)
        if region is not None and name not in {f.tracking_id for f in found}:
            found.append(Finding(name, LUNG, region=region))
    return tuple(found)
