"""Write the smallest DICOM that triggers each OHIF defect in docs/upstream/ (highdicom 0.28).

    python make_repro.py OUTDIR

writes OUTDIR/dx.dcm (a 64x64 DX chest image, no Frame of Reference, as projection radiographs
are), OUTDIR/dx-seg.dcm (a one-segment BINARY SEG of it: OHIF 3.13.2 crashes with
"Cannot destructure property 'PixelMeasuresSequence' of 'SharedFunctionalGroup'") and
OUTDIR/dx-sr.dcm (a TID 1500 SR with one measurement group that has a NUM and an image
reference but no SCOORD: OHIF crashes with "Cannot read properties of undefined (reading
'ReferencedSOPSequence')"). Store all three in any DICOMweb server and open the study in OHIF.
"""

from __future__ import annotations

import sys
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid


def dx_image() -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Repro^DX", "REPRO1", "", "O"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.StudyID, ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "1", "20240101", "120000", ""
    ds.ReferringPhysicianName, ds.Manufacturer = "", "Repro"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "DX", 1, 1
    ds.PresentationIntentType, ds.ImageType = "FOR PRESENTATION", ["ORIGINAL", "PRIMARY"]
    ds.BodyPartExamined, ds.ViewPosition, ds.PatientOrientation = "CHEST", "PA", ["L", "F"]
    ds.ImagerPixelSpacing = [0.5, 0.5]
    ds.Rows = ds.Columns = 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.WindowCenter, ds.WindowWidth = 0, 1, 2048, 4096
    ds.PixelIntensityRelationship, ds.PixelIntensityRelationshipSign = "LOG", 1
    ds.BurnedInAnnotation, ds.LossyImageCompression = "NO", "00"
    yy, xx = np.mgrid[:64, :64]
    ds.PixelData = (
        (1000 + 2000 * ((yy - 32) ** 2 + (xx - 32) ** 2 < 400)).astype(np.uint16).tobytes()
    )
    return ds


def dx_seg(image: Dataset) -> hd.seg.Segmentation:
    mask = np.zeros((1, 64, 64), bool)
    mask[0, 20:44, 20:44] = True
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Heart",
        segmented_property_category=codes.SCT.AnatomicalStructure,
        segmented_property_type=codes.SCT.Heart,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            "repro", codes.DCM.ArtificialIntelligence, "1.0"
        ),
    )
    return hd.seg.Segmentation(
        source_images=[image],
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=generate_uid(),
        series_number=100,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="Repro",
        manufacturer_model_name="repro",
        software_versions="1.0",
        device_serial_number="1",
    )


def dx_sr(image: Dataset) -> hd.sr.Comprehensive3DSR:
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="heart"),
        finding_type=codes.SCT.Heart,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(image)],
        measurements=[
            hd.sr.Measurement(
                name=codes.SCT.Width,
                value=126.8,
                unit=hd.sr.CodedConcept("mm", "UCUM", "millimeter"),
            )
        ],
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_person_context=hd.sr.ObserverContext(
                observer_type=codes.DCM.Person,
                observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
                    name="Repro^Person"
                ),
            )
        ),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=[group],
    )
    return hd.sr.Comprehensive3DSR(
        evidence=[image],
        content=report,
        series_instance_uid=generate_uid(),
        series_number=200,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="Repro",
    )


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    image = dx_image()
    image.save_as(out / "dx.dcm", enforce_file_format=True)
    dx_seg(image).save_as(out / "dx-seg.dcm")
    dx_sr(image).save_as(out / "dx-sr.dcm")
    print(f"wrote dx.dcm, dx-seg.dcm, dx-sr.dcm in {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "repro"))
