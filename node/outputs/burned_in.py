"""Secondary captures with the segmentation burned in, for PACS that cannot show a SEG.

One RGB image per input frame that any segment touches: the frame in grey (the source's
first window, else its 1st-99th percentile), each segment filled translucently and outlined
in its display colour. The images are derived, lossy views: they say so (Burned In Annotation,
Image Type DERIVED\\SECONDARY, Source Image Sequence) and never replace the SEG.
"""

from __future__ import annotations

from functools import reduce

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from scipy import ndimage

from models.api import Findings, PluginInput
from node.outputs.context import OutputContext
from node.outputs.errors import refused_by_highdicom
from node.outputs.identity import copy_identity, prepared_header
from node.outputs.seg import DEFAULT_COLORS, MANUFACTURER
from node.outputs.uids import ResultUids
from node.shared_types import OutputKind

FILL_OPACITY = 0.35


def patient_orientation(header: Dataset) -> tuple[str, str] | None:
    """Row and column direction letters (e.g. ("L", "P")) from the header, if it has any."""
    if "ImageOrientationPatient" in header:
        cosines = np.array(header.ImageOrientationPatient, float).reshape(2, 3)
        return (_letters(cosines[0]), _letters(cosines[1]))
    given = header.get("PatientOrientation")
    if given and len(given) == 2 and all(given):
        return (str(given[0]), str(given[1]))
    return None


def _letters(direction: np.ndarray) -> str:
    """The dominant direction's letter (highdicom accepts one letter per direction)."""
    names = (("L", "R"), ("P", "A"), ("H", "F"))
    axis = int(np.argmax(np.abs(direction)))
    return names[axis][0 if direction[axis] > 0 else 1]


def _first(value: object) -> float:
    return float(value[0] if isinstance(value, MultiValue | list | tuple) else value)  # type: ignore[index,arg-type]


def _grey(frame: np.ndarray, header: Dataset, inverted: bool) -> np.ndarray:
    """8-bit grey of a frame: the source's first window, unless the loader inverted the
    values (MONOCHROME1), which the window no longer fits; else the 1st-99th percentile."""
    center, width = header.get("WindowCenter"), header.get("WindowWidth")
    if center is not None and width is not None and not inverted:
        center, width = _first(center), _first(width)
        low, high = center - width / 2, center + width / 2
    else:
        low, high = np.percentile(frame, (1, 99))
    if high <= low:
        high = low + 1
    return (np.clip((frame - low) / (high - low), 0, 1) * 255).astype(np.float32)


def build_burned_in(
    findings: Findings, source: PluginInput, context: OutputContext
) -> list[hd.sc.SCImage]:
    """One secondary capture per frame with any segmented pixel, in input frame order."""
    uids = ResultUids(context.job_id)
    headers = {header.SOPInstanceUID: header for header in source.headers}
    masks = [
        (s, np.array(s.color_rgb or DEFAULT_COLORS[n % len(DEFAULT_COLORS)], np.float32))
        for n, s in enumerate(findings.segments)
    ]
    touched = reduce(np.union1d, (s.frames_present for s in findings.segments), np.empty(0, int))
    images = []
    for number, index in enumerate(touched, 1):
        frame = source.sources[index]
        header = prepared_header(headers[frame.sop_instance_uid])
        grey = _grey(
            source.pixels[index], header, source.photometric_interpretation == "MONOCHROME1"
        )
        rgb = np.repeat(grey[..., None], 3, axis=2)
        for segment, color in masks:
            plane = segment.frame(index)
            if not plane.any():
                continue
            rgb[plane] = (1 - FILL_OPACITY) * rgb[plane] + FILL_OPACITY * color
            edge = plane & ~ndimage.binary_erosion(plane)
            rgb[edge] = color
        orientation = patient_orientation(header)
        with refused_by_highdicom("a burned-in secondary capture of this source"):
            image = hd.sc.SCImage.from_ref_dataset(
                ref_dataset=header,
                pixel_array=rgb.round().astype(np.uint8),
                photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
                bits_allocated=8,
                coordinate_system=hd.CoordinateSystemNames.PATIENT,
                series_instance_uid=uids.series(OutputKind.BURNED_IN_SC),
                series_number=context.series_number_of(OutputKind.BURNED_IN_SC),
                sop_instance_uid=uids.instance(OutputKind.BURNED_IN_SC, int(index)),
                instance_number=number,
                manufacturer=MANUFACTURER,
                pixel_spacing=source.pixel_spacing if source.has_spacing else None,
                patient_orientation=orientation or ("L", "F"),
                series_description=context.series_description(OutputKind.BURNED_IN_SC),
                manufacturer_model_name=context.plugin_name[:64],
                software_versions=context.software_versions,
            )
        if orientation is None:
            image.PatientOrientation = None  # unknown: Type 2, left empty rather than guessed
        image.ImageType = ["DERIVED", "SECONDARY"]
        image.BurnedInAnnotation = "YES"
        image.DerivationDescription = (
            f"Segmentation by {findings.algorithm.name} {findings.algorithm.version} "
            "burned into the source image"
        )[:1024]
        if context.not_for_diagnostic_use:
            image.ImageComments = "NOT FOR DIAGNOSTIC USE"
        reference = Dataset()
        reference.ReferencedSOPClassUID = frame.sop_class_uid
        reference.ReferencedSOPInstanceUID = frame.sop_instance_uid
        if frame.frame_number is not None:
            reference.ReferencedFrameNumber = frame.frame_number
        image.SourceImageSequence = [reference]
        if header.get("BodyPartExamined"):
            image.BodyPartExamined = header.BodyPartExamined
        # Laterality is Type 2C (paired body parts): as the source has it, and empty where
        # the body part is unknown (dciodvfy then demands it)
        if "Laterality" in header:
            image.Laterality = header.Laterality
        elif "BodyPartExamined" not in image:
            image.Laterality = None
        copy_identity(image, header)
        if context.institution_name:
            image.InstitutionName = context.institution_name
        images.append(image)
    return images
