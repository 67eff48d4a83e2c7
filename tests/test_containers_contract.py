"""The container runner's contract without an engine: the manifest section, findings.json and
its NIfTI masks, what an output folder may hold, how product DICOM is classed and checked,
and the engine command line (no network, read-only, non-root, limits, GPU)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel
import numpy as np
import pytest
from outputs_support import context, full_findings, synthetic_ct
from pydicom.uid import (
    BasicTextSRStorage,
    ComprehensiveSRStorage,
    CTImageStorage,
    EncapsulatedPDFStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)

from models.api import AlgorithmIdentification, PluginInput
from models.containers.collect import OutputRefused, collect_outputs
from models.containers.engine import ContainerEngine, EngineKind, EngineSettings, Mount, RunRequest
from models.containers.findings_json import FindingsFileError, read_findings, write_findings
from models.containers.folders import AppManifest, stage_input, write_task
from models.containers.spec import ContainerSpec
from models.manifest import ManifestError, load_manifest
from node.outputs import build_outputs
from node.outputs.relay import RelayRefused, result_kind
from node.shared_types import OutputKind

DIGEST = "sha256:" + "ab" * 32
ALGORITHM = AlgorithmIdentification("vendor-product", "2.0")


@pytest.fixture(scope="module")
def ct(tmp_path_factory) -> PluginInput:
    return synthetic_ct(tmp_path_factory.mktemp("ct"))[1]


# -- the manifest section -----------------------------------------------------------------------


def _manifest(tmp_path: Path, **container: object) -> Path:
    folder = tmp_path / "product"
    folder.mkdir(exist_ok=True)
    text = {
        "name": "vendor-lung",
        "version": "2.0.0",
        "runner": "container",
        "container": {"image": f"registry.example/vendor/lung@{DIGEST}", **container},
    }
    (folder / "plugin.yaml").write_text(json.dumps(text))
    return folder


def test_a_digest_pinned_manifest_loads(tmp_path):
    manifest = load_manifest(_manifest(tmp_path, lifecycle="warm", environment={"MODE": "x"}))
    assert manifest.container is not None
    assert manifest.container.name == "registry.example/vendor/lung"
    assert manifest.container.digest == DIGEST
    assert manifest.container.user == "65534:65534" and manifest.container.network == "none"


def test_a_tag_is_refused_with_how_to_get_the_digest(tmp_path):
    with pytest.raises(ManifestError) as caught:
        load_manifest(_manifest(tmp_path, image="vendor/lung:2.0"))
    message = str(caught.value)
    assert "not pinned by digest" in message
    assert "image inspect --format '{{.Digest}}' vendor/lung:2.0" in message


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("image", "vendor/lung@sha256:123", "not a valid digest reference"),
        ("user", "0:0", "must not be root"),
        ("user", "nobody", "numeric uid:gid"),
        ("network", "host", "'host' is never allowed"),
        ("environment", {"MERCURE_IN_DIR": "/x"}, "set by the node"),
    ],
)
def test_unsafe_or_wrong_settings_are_refused(tmp_path, field, value, says):
    with pytest.raises(ManifestError, match=says):
        load_manifest(_manifest(tmp_path, **{field: value}))


def test_a_container_manifest_carries_no_model_of_its_own(tmp_path):
    folder = _manifest(tmp_path)
    text = json.loads((folder / "plugin.yaml").read_text())
    text["model"] = {"file": "m.onnx", "sha256": "0" * 64}
    (folder / "plugin.yaml").write_text(json.dumps(text))
    with pytest.raises(ManifestError, match="remove model"):
        load_manifest(folder)


# -- findings.json ------------------------------------------------------------------------------


def test_findings_round_trip_through_json_and_nifti(ct, tmp_path):
    findings = full_findings(ct)
    write_findings(findings, ct, tmp_path)
    back = read_findings(tmp_path, ct)
    assert [s.key for s in back.segments] == [s.key for s in findings.segments]
    for before, after in zip(findings.segments, back.segments, strict=True):
        np.testing.assert_array_equal(after.binary, before.binary)
        assert after.category == before.category and after.type == before.type
    assert back.findings == findings.findings  # graphics, regions and values included
    assert back.study_evaluations == findings.study_evaluations
    assert back.report == findings.report


def test_a_nifti_on_permuted_and_flipped_axes_lands_on_the_same_voxels(ct, tmp_path):
    findings = full_findings(ct)
    write_findings(findings, ct, tmp_path)
    first = tmp_path / "mask-1.nii.gz"
    image = nibabel.load(first)
    data = np.asanyarray(image.dataobj)
    # reverse the first voxel axis and swap the last two, keeping the affine true to it
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1, data.shape[0] - 1
    swap = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], float)
    moved = np.ascontiguousarray(data[::-1].transpose(0, 2, 1))
    affine = image.affine @ flip @ swap
    nibabel.save(nibabel.Nifti1Image(moved, affine), first)
    back = read_findings(tmp_path, ct)
    np.testing.assert_array_equal(back.segments[0].binary, findings.segments[0].binary)


def test_a_mask_off_the_input_grid_is_refused(ct, tmp_path):
    write_findings(full_findings(ct), ct, tmp_path)
    first = tmp_path / "mask-1.nii.gz"
    image = nibabel.load(first)
    half = image.affine @ np.diag([2.0, 2.0, 1.0, 1.0])
    nibabel.save(nibabel.Nifti1Image(np.asanyarray(image.dataobj), half), first)
    with pytest.raises(FindingsFileError, match="not on the input's voxel grid"):
        read_findings(tmp_path, ct)


def test_npy_masks_labels_and_instance_references(ct, tmp_path):
    labels = np.zeros(ct.shape, np.uint8)
    labels[3:6, 10:20, 10:20] = 2
    np.save(tmp_path / "labels.npy", labels)
    source = ct.sources[4]
    document = {
        "contract": "ainode-findings/1",
        "algorithm": {"name": "vendor", "version": "1"},
        "segments": [
            {
                "key": "lesion",
                "label": "Lesion",
                "category": {"value": "49755003", "scheme": "SCT", "meaning": "Morphologic"},
                "type": {"value": "108369006", "scheme": "SCT", "meaning": "Neoplasm"},
                "mask": {"file": "labels.npy", "label": 2},
            }
        ],
        "findings": [
            {
                "tracking_id": "lesion-1",
                "finding_type": {"value": "108369006", "scheme": "SCT", "meaning": "Neoplasm"},
                "segment_key": "lesion",
                "measurements": [
                    {
                        "concept": {"value": "410668003", "scheme": "SCT", "meaning": "Length"},
                        "value": 9.5,
                        "unit": {"value": "mm", "scheme": "UCUM", "meaning": "millimeter"},
                        "graphic": {
                            "kind": "line",
                            "sop_instance_uid": source.sop_instance_uid,
                            "points": [[10, 10], [19, 19]],
                        },
                    }
                ],
            }
        ],
    }
    (tmp_path / "findings.json").write_text(json.dumps(document))
    back = read_findings(tmp_path, ct)
    assert back.segments[0].binary.sum() == 3 * 10 * 10
    assert back.findings[0].measurements[0].graphic.frame == 4


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{not json", "not readable JSON"),
        ('{"contract": "other/9", "algorithm": {"name": "a", "version": "1"}}', "contract"),
        ('{"contract": "ainode-findings/1"}', "algorithm"),
    ],
)
def test_a_broken_findings_file_says_what_is_wrong(ct, tmp_path, text, says):
    (tmp_path / "findings.json").write_text(text)
    with pytest.raises(FindingsFileError, match=says):
        read_findings(tmp_path, ct)


# -- the output folder --------------------------------------------------------------------------


def _product_seg(ct: PluginInput):
    built = build_outputs(full_findings(ct), ct, context(outputs=(OutputKind.SEG,)))
    return built[0].dataset


def test_product_dicom_is_collected_and_checked_against_the_source(ct, tmp_path):
    seg = _product_seg(ct)
    seg.save_as(tmp_path / "seg.dcm", enforce_file_format=True)
    (tmp_path / "preview.png").write_bytes(b"\x89PNG not read")
    findings = collect_outputs(tmp_path, ct, ALGORITHM)
    assert [i.file_name for i in findings.instances] == ["seg.dcm"]
    assert findings.algorithm == ALGORITHM and not findings.segments


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"StudyInstanceUID": "1.2.3.4"}, "not the source study"),
        ({"PatientID": "SOMEONE-ELSE"}, "another patient"),
        ("series", "reuses the source's Series Instance UID"),
        ("sop", "reuses a source SOP Instance UID"),
    ],
)
def test_product_dicom_of_another_patient_or_reusing_uids_is_refused(ct, tmp_path, change, says):
    seg = _product_seg(ct)
    if change == "series":
        seg.SeriesInstanceUID = ct.series_instance_uid
    elif change == "sop":
        seg.SOPInstanceUID = ct.sources[0].sop_instance_uid
    else:
        for keyword, value in change.items():
            setattr(seg, keyword, value)
    seg.save_as(tmp_path / "seg.dcm", enforce_file_format=True)
    with pytest.raises(OutputRefused, match=says):
        collect_outputs(tmp_path, ct, ALGORITHM)


def test_garbage_or_nothing_fails_the_job(ct, tmp_path):
    with pytest.raises(OutputRefused, match=r"no DICOM and no findings\.json"):
        collect_outputs(tmp_path, ct, ALGORITHM)
    (tmp_path / "result.dcm").write_bytes(np.random.default_rng(1).bytes(5000))
    with pytest.raises(OutputRefused, match=r"result\.dcm is not readable DICOM"):
        collect_outputs(tmp_path, ct, ALGORITHM)


def test_result_kinds_follow_the_sop_class():
    assert result_kind(SegmentationStorage) is OutputKind.SEG
    assert result_kind(ComprehensiveSRStorage) is OutputKind.SR
    assert result_kind(BasicTextSRStorage) is OutputKind.TEXT_SR
    assert result_kind(SecondaryCaptureImageStorage) is OutputKind.BURNED_IN_SC
    assert result_kind(EncapsulatedPDFStorage) is OutputKind.TEXT_SR
    with pytest.raises(RelayRefused, match="CT Image Storage is not a result"):
        result_kind(CTImageStorage)


# -- folders and the command line ---------------------------------------------------------------


def test_input_folder_and_task_json(ct, tmp_path):
    assert stage_input(ct, tmp_path) == len(ct.files)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert all(n.startswith(f"{ct.series_instance_uid}#") for n in names)
    written = write_task(ct, tmp_path, run_id="r", plugin="p@1", device="cpu", settings={"x": 1})
    task = json.loads(written.read_text())
    assert task["process"]["settings"] == {"x": 1}
    assert [f["sop_instance_uid"] for f in task["ainode"]["frames"]] == [
        s.sop_instance_uid for s in ct.sources
    ]


def test_a_map_app_manifest_names_its_folders():
    app = AppManifest.from_json(
        b'{"input": {"path": "input/"}, "output": {"path": "output/"},'
        b' "workingDirectory": "/var/holoscan/", "sdk": "monai-deploy", "sdkVersion": "2.0.0"}'
    )
    assert (app.input_path, app.output_path) == ("/var/holoscan/input/", "/var/holoscan/output/")
    with pytest.raises(ValueError, match=r"input\.path and output\.path"):
        AppManifest.from_json(b'{"input": {}}')


@pytest.mark.parametrize("kind", [EngineKind.PODMAN, EngineKind.DOCKER])
def test_every_run_is_confined(kind, tmp_path):
    settings = EngineSettings(runtime="runc", run_options=("--ulimit", "nofile=1024:1024"))
    engine = ContainerEngine(f"/usr/bin/{kind.value}", kind, settings)
    spec = ContainerSpec(image=f"vendor/lung@{DIGEST}")
    command = engine.run_command(
        RunRequest(
            name="ainode-x",
            image=spec.image,
            labels={"ainode.owner": "abc"},
            mounts=(Mount(tmp_path, "/tmp/data"),),
            environment={"A": "1"},
            user=spec.user,
            network=spec.network,
            cpus=2,
            memory_mb=512,
            gpu_index=1,
        )
    )
    text = " ".join(command)
    for flag in (
        "--network none",
        "--read-only",
        "--user 65534:65534",
        "--cap-drop all",
        "--security-opt no-new-privileges",
        "--memory 512m",
        "--cpus 2",
        "--label ainode.owner=abc",
        f"--volume {tmp_path}:/tmp/data:ro",
        "--ulimit nofile=1024:1024",
    ):
        assert flag in text
    gpu = "--device nvidia.com/gpu=1" if kind is EngineKind.PODMAN else "--gpus device=1"
    assert gpu in text
    assert command[-1] == spec.image
