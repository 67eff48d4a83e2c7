"""Every reference product's TID 1500 report can be placed by a viewer.

OHIF 3.13 merges measurement groups by Tracking UID and places each merged group by its
first image coordinate; a group without any crashes it (``docs/upstream/``). So, on the demo
phantoms, every merged group must carry at least one SCOORD on an image of the source series,
on the frame the plugin drew on, inside the image; and the study-level results must be the
document's Qualitative Evaluations, never a group. The real-browser check is
``test_viewer_ohif.py``; this one needs no browser.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from models.devices import GpuSlots
from models.loading import load_plugin_input
from models.manifest import load_manifest
from models.phantoms.chest_ct import ChestCTSpec, write_chest_ct
from models.phantoms.chest_xray import make_chest_xray
from models.phantoms.neck_mr import NeckMRSpec, write_neck_mr
from models.runtime import PluginHost, catalog_of
from node.outputs import OutputContext, build_outputs
from node.shared_types import OutputKind

PLUGINS = Path(__file__).resolve().parent.parent / "models" / "plugins"
TRACKING_UID = "112040"
MEASUREMENT_GROUP = "125007"


@pytest.fixture(scope="module")
def host(tmp_path_factory) -> PluginHost:
    manifests = [
        load_manifest(p) for p in sorted(PLUGINS.iterdir()) if (p / "plugin.yaml").exists()
    ]
    slots = GpuSlots([], 1, tmp_path_factory.mktemp("slots"), check_cuda=False)
    return PluginHost(catalog_of(manifests), slots)


def _ct(folder: Path) -> list[Path]:
    return write_chest_ct(folder, ChestCTSpec.small())[1]


def _xray(folder: Path) -> list[Path]:
    return [make_chest_xray(folder).path]


def _mr(folder: Path) -> list[Path]:
    return write_neck_mr(folder, NeckMRSpec.small())[1]


PRODUCTS = {"ct-lung-nodule": _ct, "dx-chest-report": _xray, "mr-vessel-wall": _mr}


def _items(dataset: Dataset):
    for item in dataset.get("ContentSequence", []):
        yield item
        yield from _items(item)


def _merged_groups(sr: Dataset) -> dict[str, list[Dataset]]:
    """Measurement groups merged by Tracking UID, as OHIF merges them."""
    merged: dict[str, list[Dataset]] = defaultdict(list)
    for item in _items(sr):
        if item.ValueType == "CONTAINER" and item.ConceptNameCodeSequence[0].CodeValue == (
            MEASUREMENT_GROUP
        ):
            (uid,) = [
                child.UID
                for child in item.ContentSequence
                if child.ConceptNameCodeSequence[0].CodeValue == TRACKING_UID
            ]
            merged[uid].append(item)
    return merged


@pytest.mark.parametrize("plugin", sorted(PRODUCTS))
def test_every_measurement_group_has_image_coordinates(host, tmp_path, plugin) -> None:
    paths = PRODUCTS[plugin](tmp_path / "source")
    series = load_plugin_input(paths)
    findings = host.run_chain(plugin, None, series).final
    context = OutputContext(job_id=f"viewer-ready/{plugin}", plugin_name=plugin, plugin_version="1")
    (sr,) = [r.dataset for r in build_outputs(findings, series, context) if r.kind is OutputKind.SR]
    sr = pydicom.dcmread(pydicom.filebase.DicomBytesIO(_encoded(sr)))
    sources = {frame.sop_instance_uid for frame in series.sources}
    rows, columns = series.shape[1:]
    groups = _merged_groups(sr)
    assert len(groups) == len({f.tracking_id for f in findings.findings}) > 0
    for uid, parts in groups.items():
        scoords = [i for part in parts for i in _items(part) if i.ValueType == "SCOORD"]
        assert scoords, f"group {uid} has no image coordinates: OHIF cannot place it"
        for scoord in scoords:
            (image,) = scoord.ContentSequence
            reference = image.ReferencedSOPSequence[0]
            assert reference.ReferencedSOPInstanceUID in sources
            data = list(scoord.GraphicData)
            assert all(0 <= x <= columns for x in data[0::2])
            assert all(0 <= y <= rows for y in data[1::2])
    names = [i.ConceptNameCodeSequence[0].CodeMeaning for i in sr.ContentSequence]
    assert "Qualitative Evaluations" in names
    assert not any(
        i.TextValue == "Study-level results" for i in _items(sr) if i.ValueType == "TEXT"
    )


def _encoded(dataset: Dataset) -> bytes:
    buffer = pydicom.filebase.DicomBytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
