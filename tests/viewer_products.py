"""The viewer tests' inputs: each demo phantom (``node/demo.py``) run through its reference plugin
chain and the output builders in this process, as a node worker does, so the files OHIF opens
are byte for byte what the node would send.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydicom import Dataset

from models.api import Findings, PluginInput
from models.devices import GpuSlots
from models.loading import load_plugin_input
from models.manifest import load_manifest
from models.runtime import PluginHost, catalog_of
from node.outputs import OutputContext, build_outputs
from node.shared_types import PROFILE_DEFAULTS, OutputKind, SourceKind, ViewerProfile

PLUGINS = Path(__file__).resolve().parent.parent / "models" / "plugins"


@dataclass(frozen=True)
class Product:
    """One plugin's results on one phantom study, with what the plugin found."""

    plugin: str
    study_instance_uid: str
    sources: tuple[Path, ...]
    source: PluginInput
    findings: Findings
    results: dict[OutputKind, Dataset] = field(default_factory=dict)
    files: tuple[Path, ...] = ()


@dataclass(frozen=True)
class Phantom:
    """A phantom study on disk and the plugin chain (the last name is the job's plugin).

    ``outputs`` are what a destination with ``viewer_profile: ohif`` receives for it: the
    node's own choice for OHIF is what is tested in OHIF.
    """

    key: str
    chain: tuple[str, ...]
    source_kind: SourceKind

    @property
    def outputs(self) -> tuple[OutputKind, ...]:
        return PROFILE_DEFAULTS[ViewerProfile.OHIF, self.source_kind]


PHANTOMS = (
    Phantom("ct", ("ct_lung_nodule",), SourceKind.CROSS_SECTIONAL),
    Phantom("xray", ("dx_chest", "dx_chest_report"), SourceKind.RADIOGRAPH),
    Phantom("mr", ("mr_vessel_wall",), SourceKind.CROSS_SECTIONAL),
)


def write_phantom(key: str, folder: Path) -> tuple[str, tuple[Path, ...]]:
    """The demo's phantom ``key`` (ct, xray, mr) in ``folder``: (study UID, files)."""
    from node.demo import PHANTOMS as DEMO_PHANTOMS

    study = DEMO_PHANTOMS[key](folder, f"viewer-{key}")
    return study.study_instance_uid, study.files


def make_product(phantom: Phantom, folder: Path) -> Product:
    """Write the phantom, run its chain on the CPU, build and write the job's outputs."""
    study_uid, paths = write_phantom(phantom.key, folder / "source")
    manifests = [load_manifest(PLUGINS / name) for name in phantom.chain]
    host = PluginHost(catalog_of(manifests), GpuSlots([], 1, folder / "slots", check_cuda=False))
    source = load_plugin_input(list(paths))
    findings = host.run(manifests[-1].name, None, source)
    context = OutputContext(
        job_id=f"{study_uid}/viewer/{manifests[-1].name}",
        plugin_name=manifests[-1].name,
        plugin_version=manifests[-1].version,
        outputs=phantom.outputs,
    )
    results_dir = folder / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    results, files = {}, []
    for result in build_outputs(findings, source, context):
        results[result.kind] = result.dataset
        files.append(result.write(results_dir / f"{result.kind.value}.dcm"))
    return Product(
        manifests[-1].name, study_uid, tuple(paths), source, findings, results, tuple(files)
    )


@dataclass(frozen=True)
class Scoord:
    """An SCOORD in a measurement group: image pixel coordinates on one referenced image."""

    graphic_type: str
    points: tuple[tuple[float, float], ...]  # (column, row), DICOM's top-left-corner origin
    sop_instance_uid: str


@dataclass(frozen=True)
class MeasurementGroup:
    """One finding of a TID 1500 SR as the file states it: its measurement groups merged by
    Tracking UID, as OHIF merges them (a segment's group and the group of its lines)."""

    tracking_id: str
    tracking_uid: str
    values: tuple[tuple[str, float, str], ...]  # (concept meaning, value, UCUM unit)
    scoords: tuple[Scoord, ...]
    references_image: bool  # any IMAGE or SCOORD item: OHIF can place it on an image


def _meaning(item: Dataset) -> str:
    return (
        str(item.ConceptNameCodeSequence[0].CodeMeaning)
        if "ConceptNameCodeSequence" in item
        else ""
    )


def _walk(items) -> list[Dataset]:
    out = []
    for item in items:
        out.append(item)
        out.extend(_walk(item.get("ContentSequence", [])))
    return out


def measurement_groups(sr: Dataset) -> list[MeasurementGroup]:
    """The findings of a TID 1500 SR, read from the dataset (not from Findings), so the test
    compares OHIF with the file it was given."""
    groups = [
        item
        for item in _walk(sr.ContentSequence)
        if item.ValueType == "CONTAINER" and _meaning(item) == "Measurement Group"
    ]
    merged: dict[str, list[Dataset]] = {}
    for group in groups:
        (uid,) = [
            str(i.UID) for i in group.ContentSequence if _meaning(i) == "Tracking Unique Identifier"
        ]
        merged.setdefault(uid, []).extend(_walk(group.ContentSequence))
    out = []
    for uid, items in merged.items():
        tracking = [str(i.TextValue) for i in items if _meaning(i) == "Tracking Identifier"]
        values = tuple(
            (
                _meaning(i),
                float(i.MeasuredValueSequence[0].NumericValue),
                str(i.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue),
            )
            for i in items
            if i.ValueType == "NUM" and "MeasuredValueSequence" in i
        )
        scoords = tuple(
            Scoord(
                str(i.GraphicType),
                tuple(zip(i.GraphicData[0::2], i.GraphicData[1::2], strict=True)),
                str(i.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID),
            )
            for i in items
            if i.ValueType == "SCOORD"
        )
        references = any(i.ValueType in ("IMAGE", "SCOORD", "SCOORD3D") for i in items)
        out.append(
            MeasurementGroup(tracking[0] if tracking else "", uid, values, scoords, references)
        )
    return out
