"""Pseudonymisation for a vendor's node (node.pseudonym): what leaves carries none of the
original patient name, ID, birth date or UIDs; the same originals get the same pseudonyms in
a job and on a retry; a SEG the vendor makes comes back in the original study and validates.
"""

from __future__ import annotations

import logging
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from dicomanonymizer import simpledicomanonymizer
from pydicom import Dataset
from pydicom.sr.codedict import codes

from models.phantoms.chest_ct import ChestCTSpec, write_chest_ct
from models.phantoms.chest_xray import make_chest_xray
from node.db import connect
from node.pseudonym import (
    ProfileOption,
    PseudonymisationPolicy,
    PseudonymisationRefused,
    Pseudonymiser,
    ReidentificationError,
)

SECRET = b"site-secret-for-tests-only-0123456789"


@pytest.fixture(scope="module")
def originals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    root = tmp_path_factory.mktemp("originals")
    _, ct = write_chest_ct(root / "ct", ChestCTSpec.small(), uid_seed="pseudonym-ct")
    dx = make_chest_xray(root / "dx", uid_seed="pseudonym-dx")
    return {"ct": sorted(ct), "dx": [dx.path]}


def identifying_values(ds: Dataset) -> set[str]:
    """The patient's name, ID and birth date and every instance UID in ``ds``."""
    values = {str(ds.PatientName), str(ds.PatientID), str(ds.PatientBirthDate)}

    def visit(_: Dataset, element: pydicom.DataElement) -> None:
        if element.VR == "UI" and not element.keyword.endswith("ClassUID"):
            for value in element.value if element.VM > 1 else [element.value]:
                if value and not str(value).startswith("1.2.840.10008."):
                    values.add(str(value))

    ds.file_meta.walk(visit)
    ds.walk(visit)
    return {v for v in values if v}


def pseudonymise_folder(
    pseudonymiser: Pseudonymiser, files: list[Path], out: Path, job_key: str
) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in files:
        result = pseudonymiser.pseudonymise(pydicom.dcmread(path), job_key=job_key)
        target = out / path.name
        result.save_as(target, enforce_file_format=True)
        written.append(target)
    return written


def test_files_the_vendor_receives_contain_no_original_identifiers(originals, tmp_path):
    pseudonymiser = Pseudonymiser(connect(tmp_path / "node.db"), PseudonymisationPolicy(SECRET))
    for modality, files in originals.items():
        secrets = set().union(*(identifying_values(pydicom.dcmread(f)) for f in files))
        assert len(secrets) > len(files)  # name, ID, birth date, study, series, each SOP ...
        for path in pseudonymise_folder(pseudonymiser, files, tmp_path / modality, "job-1"):
            data = path.read_bytes()
            leaked = sorted(value for value in secrets if value.encode() in data)
            assert not leaked, f"{path.name} carries {len(leaked)} original values"
            ds = pydicom.dcmread(path)
            assert ds.PatientIdentityRemoved == "YES"
            assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
            assert ds.LongitudinalTemporalInformationModified == "REMOVED"
            assert ds.PatientBirthDate == ""
            assert "SeriesDescription" not in ds  # X in Table E.1-1
    # the library's own process-wide UID dictionary is never used: UIDs are ours, per job
    assert simpledicomanonymizer.dictionary == {}


def test_same_originals_get_the_same_pseudonyms_in_a_job_and_on_a_retry(originals, tmp_path):
    database = tmp_path / "node.db"
    first = Pseudonymiser(connect(database), PseudonymisationPolicy(SECRET))
    sent = [
        pydicom.dcmread(p)
        for p in pseudonymise_folder(first, originals["ct"], tmp_path / "a", "job-7")
    ]
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "PatientID"):
        assert len({ds[keyword].value for ds in sent}) == 1, keyword
    assert len({ds.SOPInstanceUID for ds in sent}) == len(sent)
    assert all(ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID for ds in sent)

    # a retry after a restart, even with another secret, reuses the stored pseudonyms
    retry = Pseudonymiser(connect(database), PseudonymisationPolicy(b"another-secret-0123456789"))
    again = pydicom.dcmread(
        pseudonymise_folder(retry, originals["ct"][:3], tmp_path / "b", "job-7")[1]
    )
    assert again.SOPInstanceUID == sent[1].SOPInstanceUID
    assert again.StudyInstanceUID == sent[1].StudyInstanceUID
    assert again.PatientName == sent[1].PatientName

    # another job gets other pseudonyms: a vendor cannot link two sends
    other = first.pseudonymise(pydicom.dcmread(originals["ct"][1]), job_key="job-8")
    assert other.StudyInstanceUID != sent[1].StudyInstanceUID
    assert other.PatientID != sent[1].PatientID

    conn = connect(database)
    rows = conn.execute(
        "SELECT kind, count(*) FROM pseudonyms WHERE job_key = 'job-7' GROUP BY kind"
    ).fetchall()
    # every SOP instance, the study, the series and the frame of reference; one patient
    assert dict(rows) == {"uid": len(originals["ct"]) + 3, "patient": 1}


def test_nested_references_get_the_referenced_instances_pseudonyms(originals, tmp_path):
    first, second = (pydicom.dcmread(p) for p in originals["ct"][:2])
    reference = Dataset()
    reference.ReferencedSOPClassUID = second.SOPClassUID
    reference.ReferencedSOPInstanceUID = second.SOPInstanceUID
    first.ReferencedImageSequence = [reference]  # X/Z/U* in Table E.1-1
    holder = Dataset()
    holder.ReferencedSOPInstanceUID = second.SOPInstanceUID
    first.DerivationImageSequence = [holder]  # a sequence the table does not name
    first.AcquisitionContextSequence = [Dataset()]  # X/Z: zero items
    block = first.private_block(0x0011, "HOSPITAL PRIVATE", create=True)
    block.add_new(0x01, "LO", str(first.PatientName))
    pseudonymiser = Pseudonymiser(connect(tmp_path / "node.db"), PseudonymisationPolicy(SECRET))

    sent_first = pseudonymiser.pseudonymise(first, job_key="job-9")
    sent_second = pseudonymiser.pseudonymise(second, job_key="job-9")

    pseudo = sent_second.SOPInstanceUID
    assert sent_first.ReferencedImageSequence[0].ReferencedSOPInstanceUID == pseudo
    assert sent_first.ReferencedImageSequence[0].ReferencedSOPClassUID == second.SOPClassUID
    assert sent_first.DerivationImageSequence[0].ReferencedSOPInstanceUID == pseudo
    assert len(sent_first.AcquisitionContextSequence) == 0
    assert not any(element.tag.is_private for element in sent_first)


def test_options_keep_what_their_column_keeps(originals, tmp_path):
    source = pydicom.dcmread(originals["ct"][0])
    options = frozenset(ProfileOption)
    policy = PseudonymisationPolicy(SECRET, options=options)
    ds = Pseudonymiser(connect(tmp_path / "node.db"), policy).pseudonymise(source, job_key="j")
    assert ds.PatientSex == source.PatientSex and ds.PatientSex
    assert ds.StudyDate == source.StudyDate and ds.StudyTime == source.StudyTime
    assert ds.DeviceSerialNumber == source.DeviceSerialNumber
    assert ds.PatientBirthDate == ""  # never longitudinal
    assert ds.LongitudinalTemporalInformationModified == "UNMODIFIED"
    assert [item.CodeValue for item in ds.DeidentificationMethodCodeSequence] == [
        "113100",
        "113109",
        "113106",
        "113108",
    ]


def test_policy_says_what_to_fix(tmp_path):
    with pytest.raises(ValueError, match="at least 16 bytes"):
        PseudonymisationPolicy(b"short")
    key = tmp_path / "pseudonym.key"
    key.write_bytes(SECRET)
    with pytest.raises(ValueError, match="choose from"):
        PseudonymisationPolicy.from_secret_file(key, options=["clean-everything"])
    policy = PseudonymisationPolicy.from_secret_file(key, options=["retain-device-identity"])
    assert policy.options == {ProfileOption.RETAIN_DEVICE_IDENTITY}
    assert SECRET.decode() not in repr(policy)


def test_burned_in_annotation_is_refused(originals, tmp_path):
    ds = pydicom.dcmread(originals["dx"][0])
    ds.BurnedInAnnotation = "YES"
    pseudonymiser = Pseudonymiser(connect(tmp_path / "node.db"), PseudonymisationPolicy(SECRET))
    with pytest.raises(PseudonymisationRefused, match="burned-in"):
        pseudonymiser.pseudonymise(ds, job_key="j")


def vendor_seg(images: list[Dataset]) -> hd.seg.Segmentation:
    """What a vendor's node makes from the pseudonymised series: a BINARY SEG, one segment."""
    mask = np.zeros((len(images), images[0].Rows, images[0].Columns), dtype=bool)
    middle = len(images) // 2
    mask[middle - 1 : middle + 2, 20:30, 20:30] = True
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Nodule",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Nodule,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="Vendor CAD", version="1.0", family=codes.cid7162.ArtificialIntelligence
        ),
    )
    return hd.seg.Segmentation(
        source_images=images,
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=hd.UID(),
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="Vendor",
        manufacturer_model_name="Vendor CAD",
        software_versions="1.0",
        device_serial_number="V-1",
    )


def test_a_vendor_seg_comes_back_in_the_original_study(
    originals, tmp_path, validate_dicom, caplog, capsys
):
    caplog.set_level(logging.DEBUG)
    sources = [pydicom.dcmread(p) for p in originals["ct"]]
    pseudonymiser = Pseudonymiser(connect(tmp_path / "node.db"), PseudonymisationPolicy(SECRET))
    sent = [pseudonymiser.pseudonymise(ds, job_key="job-3") for ds in sources]
    seg = vendor_seg(sent)

    result = pseudonymiser.reidentify(seg, job_key="job-3", source=sources[0])

    original = sources[0]
    for keyword in (
        "StudyInstanceUID",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "StudyID",
    ):
        assert result[keyword].value == original[keyword].value, keyword
    assert result.FrameOfReferenceUID == original.FrameOfReferenceUID
    (series,) = result.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == original.SeriesInstanceUID
    referenced = {item.ReferencedSOPInstanceUID for item in series.ReferencedInstanceSequence}
    assert referenced <= {ds.SOPInstanceUID for ds in sources} and referenced
    per_frame = {
        frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        for frame in result.PerFrameFunctionalGroupsSequence
    }
    assert per_frame <= {ds.SOPInstanceUID for ds in sources}
    # the vendor's own new UIDs stay; the de-identification marks go
    assert result.SOPInstanceUID == seg.SOPInstanceUID
    assert result.SeriesInstanceUID == seg.SeriesInstanceUID
    assert "PatientIdentityRemoved" not in result and "DeidentificationMethod" not in result

    path = tmp_path / "seg.dcm"
    result.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    assert not [ds.SOPInstanceUID for ds in sent if ds.SOPInstanceUID.encode() in data]
    assert sent[0].StudyInstanceUID.encode() not in data
    checked = validate_dicom(path, sources=(originals["ct"][0].parent,))
    assert checked.returncode == 0, checked.stdout + checked.stderr

    printed = capsys.readouterr()
    logged = caplog.text + printed.out + printed.err
    assert "job-3" in caplog.text  # the records are there, and say nothing about the patient
    for value in (str(original.PatientName), original.PatientID, original.PatientBirthDate):
        assert value not in logged
    for family in str(original.PatientName).split("^"):
        assert family not in logged


def test_a_result_for_another_study_is_not_reidentified(originals, tmp_path):
    sources = [pydicom.dcmread(p) for p in originals["ct"]]
    pseudonymiser = Pseudonymiser(connect(tmp_path / "node.db"), PseudonymisationPolicy(SECRET))
    sent = [pseudonymiser.pseudonymise(ds, job_key="job-4") for ds in sources]
    seg = vendor_seg(sent)
    with pytest.raises(ReidentificationError, match="not a pseudonym"):
        pseudonymiser.reidentify(seg, job_key="job-5", source=sources[0])
