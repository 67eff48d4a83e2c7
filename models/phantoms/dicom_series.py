"""Write a phantom volume as a realistic single-frame CT Image or MR Image series.

Phantoms must route, load and validate like a scanner's output, so every instance carries the
Patient, General Study, General Series, Frame of Reference, General Equipment, General Image,
Image Plane, Image Pixel, CT/MR Image, VOI LUT and SOP Common modules, with every Type 2
attribute present (dciodvfy reports each missing one as an error, and highdicom's SEG/SR
constructors raise on a missing PatientBirthDate, PatientSex, AccessionNumber, StudyID,
StudyDate or StudyTime). UIDs are derived from a seed, so the same phantom written twice has
the same UIDs and a different seed gives a different study.

``identity_dataset`` is public so the writers of other IODs (DX, CR) can start from the same
patient, study, series, equipment and SOP Common attributes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

__all__ = [
    "CTAcquisition",
    "MRAcquisition",
    "Modality",
    "SeriesIdentity",
    "SliceGeometry",
    "StudyIdentity",
    "derived_uid",
    "identity_dataset",
    "write_ct_series",
    "write_mr_series",
]

_CT_HU_OFFSET = 1024  # stored = HU + 1024, RescaleIntercept -1024, as most scanners write CT


class Modality(StrEnum):
    CT = "CT"
    MR = "MR"
    DX = "DX"
    CR = "CR"


def derived_uid(seed: str, *parts: object) -> str:
    """A valid UID (under pydicom's root) that depends only on ``seed`` and ``parts``."""
    return generate_uid(entropy_srcs=[seed, *(str(p) for p in parts)])


@dataclass(frozen=True)
class StudyIdentity:
    """Patient and General Study attributes; all synthetic, never a real person."""

    study_instance_uid: str
    patient_name: str = "Phantom^Synthetic"
    patient_id: str = "PHANTOM-0001"
    patient_birth_date: str = "19600101"
    patient_sex: str = "O"
    study_date: str = "20260101"
    study_time: str = "090000"
    accession_number: str = "PHANTOM0001"
    study_id: str = "1"
    study_description: str = ""
    referring_physician_name: str = ""

    def __post_init__(self) -> None:
        if not self.study_instance_uid:
            raise ValueError("StudyIdentity needs a StudyInstanceUID (use StudyIdentity.from_seed)")
        if self.patient_sex not in ("M", "F", "O", ""):
            raise ValueError(f"PatientSex must be M, F, O or empty, got {self.patient_sex!r}")
        for name in ("patient_birth_date", "study_date"):
            value = getattr(self, name)
            if value and (len(value) != 8 or not value.isdigit()):
                raise ValueError(f"{name} must be a DICOM DA (YYYYMMDD), got {value!r}")

    @classmethod
    def from_seed(cls, seed: str, **attributes: str) -> StudyIdentity:
        return cls(study_instance_uid=derived_uid(seed, "study"), **attributes)


@dataclass(frozen=True)
class SeriesIdentity:
    """General Series, Frame of Reference and General Equipment attributes."""

    modality: Modality
    series_instance_uid: str
    frame_of_reference_uid: str
    series_number: int = 1
    series_description: str = ""
    body_part_examined: str = ""
    protocol_name: str = ""
    patient_position: str = "HFS"
    manufacturer: str = "ainode phantoms"
    manufacturer_model_name: str = "Synthetic"
    station_name: str = "PHANTOM"
    software_versions: str = "1"
    device_serial_number: str = "0001"
    institution_name: str = "ainode"
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL")
    uid_seed: str = ""

    def __post_init__(self) -> None:
        if self.series_number < 0:
            raise ValueError(f"SeriesNumber must be >= 0, got {self.series_number}")
        if len(self.image_type) < 2:
            raise ValueError("ImageType needs at least two values (e.g. ORIGINAL, PRIMARY)")
        if len(self.body_part_examined) > 16:
            raise ValueError(
                f"BodyPartExamined is a CS of at most 16 chars: {self.body_part_examined!r}"
            )

    @classmethod
    def from_seed(cls, seed: str, modality: Modality, **attributes: object) -> SeriesIdentity:
        number = attributes.get("series_number", 1)
        return cls(
            modality=modality,
            series_instance_uid=derived_uid(seed, "series", number),
            frame_of_reference_uid=derived_uid(seed, "frame-of-reference"),
            uid_seed=seed,
            **attributes,  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class SliceGeometry:
    """Where the slices lie in patient space (LPS, mm).

    ``origin`` is the centre of the top-left pixel of the first slice; slice ``k`` lies at
    ``origin + k * slice_spacing * normal``, where ``normal`` is the cross product of the row
    and column direction cosines (for axial slices +z, i.e. towards the head).
    """

    pixel_spacing: tuple[float, float]  # (between rows, between columns)
    slice_thickness: float
    slice_spacing: float
    origin: tuple[float, float, float]
    orientation: tuple[float, float, float, float, float, float] = (1, 0, 0, 0, 1, 0)

    def __post_init__(self) -> None:
        if min(self.pixel_spacing) <= 0 or self.slice_thickness <= 0 or self.slice_spacing == 0:
            raise ValueError(f"spacings must be positive: {self}")
        row, col = np.asarray(self.orientation[:3]), np.asarray(self.orientation[3:])
        if not (np.isclose(np.linalg.norm(row), 1) and np.isclose(np.linalg.norm(col), 1)):
            raise ValueError("ImageOrientationPatient cosines must be unit vectors")
        if not np.isclose(row @ col, 0, atol=1e-6):
            raise ValueError("ImageOrientationPatient row and column cosines must be orthogonal")

    @property
    def normal(self) -> np.ndarray:
        return np.cross(np.asarray(self.orientation[:3]), np.asarray(self.orientation[3:]))

    def position(self, index: int) -> np.ndarray:
        return np.asarray(self.origin, dtype=float) + index * self.slice_spacing * self.normal

    @classmethod
    def centred_axial(
        cls,
        shape: tuple[int, int, int],
        pixel_spacing: tuple[float, float],
        slice_spacing: float,
        slice_thickness: float | None = None,
        centre_z: float = 0.0,
    ) -> SliceGeometry:
        """Axial slices centred on the patient axis; slice 0 is the most inferior."""
        frames, rows, cols = shape
        origin = (
            -(cols - 1) * pixel_spacing[1] / 2,
            -(rows - 1) * pixel_spacing[0] / 2,
            centre_z - (frames - 1) * slice_spacing / 2,
        )
        return cls(
            pixel_spacing=pixel_spacing,
            slice_thickness=slice_thickness if slice_thickness is not None else slice_spacing,
            slice_spacing=slice_spacing,
            origin=origin,
        )


@dataclass(frozen=True)
class CTAcquisition:
    kvp: float = 120.0
    exposure_mas: int = 200
    convolution_kernel: str = "STANDARD"
    window_center: float = -600.0
    window_width: float = 1500.0


@dataclass(frozen=True)
class MRAcquisition:
    """MR Image module acquisition attributes; defaults describe a black-blood T1 FSE."""

    scanning_sequence: tuple[str, ...] = ("SE", "IR")
    sequence_variant: tuple[str, ...] = ("SK", "MP")
    scan_options: tuple[str, ...] = ("SP", "FS")  # spatial presaturation, fat sat
    mr_acquisition_type: str = "2D"
    repetition_time_ms: float = 800.0
    echo_time_ms: float = 10.0
    inversion_time_ms: float = 500.0
    echo_train_length: int = 12
    magnetic_field_strength_t: float = 3.0
    sequence_name: str = "*tse2d1_12"
    window_center: float = 600.0
    window_width: float = 1200.0


def identity_dataset(
    study: StudyIdentity,
    series: SeriesIdentity,
    sop_class_uid: str,
    sop_instance_uid: str,
    instance_number: int,
) -> Dataset:
    """A dataset with file meta, SOP Common, Patient, General Study, General Series, Frame of
    Reference, General Equipment and the identifying part of General Image filled in."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class_uid
    ds.file_meta.MediaStorageSOPInstanceUID = sop_instance_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_instance_uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = study.study_date, study.study_time
    # Patient
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = study.patient_birth_date
    ds.PatientSex = study.patient_sex
    # General Study
    ds.StudyInstanceUID = study.study_instance_uid
    ds.StudyDate, ds.StudyTime = study.study_date, study.study_time
    ds.ReferringPhysicianName = study.referring_physician_name
    ds.StudyID = study.study_id
    ds.AccessionNumber = study.accession_number
    if study.study_description:
        ds.StudyDescription = study.study_description
    # General Series
    ds.Modality = str(series.modality)
    ds.SeriesInstanceUID = series.series_instance_uid
    ds.SeriesNumber = series.series_number
    ds.SeriesDate, ds.SeriesTime = study.study_date, study.study_time
    if series.series_description:
        ds.SeriesDescription = series.series_description
    if series.protocol_name:
        ds.ProtocolName = series.protocol_name
    # Laterality is Type 2C when the body part is paired; an unpaired BodyPartExamined avoids it
    ds.BodyPartExamined = series.body_part_examined
    if series.modality in (Modality.CT, Modality.MR):
        ds.PatientPosition = series.patient_position  # Type 2C for CT and MR
    # Frame of Reference
    ds.FrameOfReferenceUID = series.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    # General Equipment
    ds.Manufacturer = series.manufacturer
    ds.InstitutionName = series.institution_name
    ds.StationName = series.station_name
    ds.ManufacturerModelName = series.manufacturer_model_name
    ds.DeviceSerialNumber = series.device_serial_number
    ds.SoftwareVersions = series.software_versions
    # General Image (identifying part)
    ds.InstanceNumber = instance_number
    ds.ContentDate, ds.ContentTime = study.study_date, study.study_time
    ds.AcquisitionDate, ds.AcquisitionTime = study.study_date, study.study_time
    ds.ImageType = list(series.image_type)
    return ds


def _plane_and_pixel(
    ds: Dataset, geometry: SliceGeometry, index: int, frame: np.ndarray, signed: bool
) -> None:
    position = geometry.position(index)
    ds.ImagePositionPatient = [round(float(v), 4) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in geometry.orientation]
    ds.PixelSpacing = [float(geometry.pixel_spacing[0]), float(geometry.pixel_spacing[1])]
    ds.SliceThickness = float(geometry.slice_thickness)
    ds.SpacingBetweenSlices = abs(float(geometry.slice_spacing))
    ds.SliceLocation = round(float(position @ geometry.normal), 4)
    ds.Rows, ds.Columns = frame.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = frame.astype("<i2" if signed else "<u2").tobytes()


def _check_volume(volume: np.ndarray) -> None:
    if volume.ndim != 3 or min(volume.shape) < 1:
        raise ValueError(f"volume must be (frames, rows, columns), got shape {volume.shape}")


def write_ct_series(
    directory: Path,
    hounsfield: np.ndarray,
    geometry: SliceGeometry,
    study: StudyIdentity,
    series: SeriesIdentity,
    acquisition: CTAcquisition | None = None,
) -> list[Path]:
    """Write ``hounsfield`` (frames, rows, columns) as CT Image Storage files, one per slice.

    Values are rounded and clipped to the range a 16-bit signed store with intercept -1024
    can hold. Returns the paths in slice order.
    """
    _check_volume(hounsfield)
    if series.modality is not Modality.CT:
        raise ValueError(f"write_ct_series needs a CT SeriesIdentity, got {series.modality}")
    acquisition = acquisition or CTAcquisition()

    def ct_attributes(ds: Dataset) -> None:
        ds.KVP = acquisition.kvp
        ds.ExposureTime = 500
        ds.XRayTubeCurrent = int(acquisition.exposure_mas * 2)
        ds.Exposure = acquisition.exposure_mas
        ds.ConvolutionKernel = acquisition.convolution_kernel
        ds.GantryDetectorTilt = 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -_CT_HU_OFFSET, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = acquisition.window_center, acquisition.window_width

    stored = np.clip(np.rint(hounsfield) + _CT_HU_OFFSET, -32768, 32767).astype(np.int16)
    return _write_slices(
        directory, stored, geometry, study, series, CTImageStorage, "CT", ct_attributes
    )


def write_mr_series(
    directory: Path,
    intensities: np.ndarray,
    geometry: SliceGeometry,
    study: StudyIdentity,
    series: SeriesIdentity,
    acquisition: MRAcquisition | None = None,
) -> list[Path]:
    """Write ``intensities`` (frames, rows, columns, arbitrary units >= 0) as MR Image files."""
    _check_volume(intensities)
    if series.modality is not Modality.MR:
        raise ValueError(f"write_mr_series needs an MR SeriesIdentity, got {series.modality}")
    acquisition = acquisition or MRAcquisition()

    def mr_attributes(ds: Dataset) -> None:
        ds.ScanningSequence = list(acquisition.scanning_sequence)
        ds.SequenceVariant = list(acquisition.sequence_variant)
        ds.ScanOptions = list(acquisition.scan_options)
        ds.MRAcquisitionType = acquisition.mr_acquisition_type
        ds.SequenceName = acquisition.sequence_name
        ds.RepetitionTime = acquisition.repetition_time_ms
        ds.EchoTime = acquisition.echo_time_ms
        if "IR" in acquisition.scanning_sequence:
            ds.InversionTime = acquisition.inversion_time_ms
        ds.EchoTrainLength = acquisition.echo_train_length
        ds.ImagedNucleus = "1H"
        ds.MagneticFieldStrength = acquisition.magnetic_field_strength_t
        ds.WindowCenter, ds.WindowWidth = acquisition.window_center, acquisition.window_width

    stored = np.clip(np.rint(intensities), 0, 65535).astype(np.uint16)
    return _write_slices(
        directory, stored, geometry, study, series, MRImageStorage, "MR", mr_attributes
    )


def _write_slices(
    directory: Path,
    stored: np.ndarray,
    geometry: SliceGeometry,
    study: StudyIdentity,
    series: SeriesIdentity,
    sop_class_uid: str,
    prefix: str,
    modality_attributes: Callable[[Dataset], None],
) -> list[Path]:
    """One file per slice of ``stored`` (already in its stored integer type); paths in order."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, frame in enumerate(stored):
        ds = identity_dataset(
            study,
            series,
            sop_class_uid,
            derived_uid(series.uid_seed or series.series_instance_uid, "instance", index),
            index + 1,
        )
        ds.AcquisitionNumber = 1
        modality_attributes(ds)
        _plane_and_pixel(ds, geometry, index, frame, signed=stored.dtype == np.int16)
        path = directory / f"{prefix}{index + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
