"""Helpers for the reference-plugin tests: a loaded plugin, and phantom slice order."""

from __future__ import annotations

from pathlib import Path

import pydicom

from models.api import Device, Findings, Measurement, Plugin, PluginInput
from models.manifest import load_manifest
from models.runners.python import instantiate

PLUGINS = Path(__file__).resolve().parent.parent / "models" / "plugins"


def loaded_plugin(folder: str) -> Plugin:
    """The plugin in ``models/plugins/<folder>``, loaded on the CPU."""
    instance = instantiate(load_manifest(PLUGINS / folder))
    instance.load(Device())
    return instance


def phantom_order(series: PluginInput, paths: list[Path]) -> list[int]:
    """Phantom slice index of each loaded frame (the loader may reverse the z order)."""
    index = {
        pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: i for i, p in enumerate(paths)
    }
    return [index[source.sop_instance_uid] for source in series.sources]


def ratios(findings: Findings) -> list[Measurement]:
    """The cardiothoracic ratios dx-chest reported (in the finding that draws the widths)."""
    measured = [
        *findings.study_measurements,
        *(m for f in findings.findings for m in f.measurements),
    ]
    return [m for m in measured if m.concept.meaning == "Cardiothoracic ratio"]
