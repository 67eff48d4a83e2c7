"""Helpers for the reference-plugin tests: a loaded plugin and the phantom it runs on as
module fixtures, phantom slice order, its findings checked by the validator as SEG and SR, and
how to say that dx-chest served another way (a container, Triton) found what it finds in
process."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from models.api import Device, Findings, Measurement, Plugin, PluginInput
from models.loading import load_plugin_input
from models.manifest import load_manifest
from models.runners.python import instantiate
from node.outputs import OutputContext, build_outputs

PLUGINS = Path(__file__).resolve().parent.parent / "models" / "plugins"


def loaded_plugin(folder: str) -> Plugin:
    """The plugin in ``models/plugins/<folder>``, loaded on the CPU."""
    instance = instantiate(load_manifest(PLUGINS / folder))
    instance.load(Device())
    return instance


def plugin_fixture(folder: str) -> Any:
    """A module fixture of ``loaded_plugin(folder)``: bind it as ``plugin = plugin_fixture(…)``;
    the model loads once per test module."""

    @pytest.fixture(scope="module")
    def plugin() -> Plugin:
        return loaded_plugin(folder)

    return plugin


def phantom_fixtures(
    folder: str, write: Callable[[Path], tuple[Any, list[Path]]]
) -> tuple[Any, Any, Any, Any]:
    """Module fixtures ``plugin, written, series, findings``: the plugin, the phantom that
    ``write`` puts in a fresh folder (truth, paths), the series loaded as the node loads it,
    and the plugin's findings on it. Bind them by those names, as one tuple."""

    @pytest.fixture(scope="module")
    def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, list[Path]]:
        return write(tmp_path_factory.mktemp(folder))

    @pytest.fixture(scope="module")
    def series(written: tuple[Any, list[Path]]) -> PluginInput:
        return load_plugin_input(written[1])

    @pytest.fixture(scope="module")
    def findings(plugin: Plugin, series: PluginInput) -> Findings:
        return plugin.run(series)

    return plugin_fixture(folder), written, series, findings


def assert_outputs_validate(
    plugin: Plugin,
    findings: Findings,
    series: PluginInput,
    folder: Path,
    validate_dicom: Callable[..., subprocess.CompletedProcess[str]],
    sources: tuple[Path, ...],
) -> None:
    """The findings built as outputs include a SEG and a TID 1500 SR, and every result passes
    the validator, checked against its source images."""
    context = OutputContext(
        job_id=f"test-{plugin.name}", plugin_name=plugin.name, plugin_version=plugin.version
    )
    results = build_outputs(findings, series, context)
    assert {r.kind.value for r in results} >= {"seg", "sr"}
    out = folder / "out"
    out.mkdir()
    for result in results:
        result.write(out)
    outcome = validate_dicom(out, sources=sources)
    assert outcome.returncode == 0, outcome.stdout + outcome.stderr


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


# the chest radiographs the dx-chest comparisons run on: kind, photometric, CTR, rows, columns
DX_CHEST_PHANTOMS = [
    ("DX", "MONOCHROME2", 0.42, 512, 512),
    ("DX", "MONOCHROME1", 0.58, 512, 512),
    ("CR", "MONOCHROME1", 0.45, 560, 480),
    ("CR", "MONOCHROME2", 0.61, 480, 560),
]


def dx_chest_phantoms(folder: Path) -> list[PluginInput]:
    """``DX_CHEST_PHANTOMS`` written as DICOM under ``folder`` and loaded as the node does."""
    from models.loading import load_plugin_input
    from models.phantoms.chest_xray import (
        ChestXrayAnatomy,
        Photometric,
        RadiographKind,
        make_chest_xray,
    )

    series = []
    for index, (kind, photometric, ctr, rows, columns) in enumerate(DX_CHEST_PHANTOMS):
        anatomy = ChestXrayAnatomy(ctr=ctr, rows=rows, columns=columns, seed=7100 + index)
        written = make_chest_xray(
            folder / f"cxr{index}",
            kind=RadiographKind(kind),
            photometric=Photometric(photometric),
            anatomy=anatomy,
        )
        series.append(load_plugin_input([written.path]))
    return series


def within_one_pixel(a: np.ndarray, b: np.ndarray) -> bool:
    """Every pixel where the masks differ lies on the one-pixel rim of both."""
    rim_a = ndimage.binary_dilation(a) & ~ndimage.binary_erosion(a)
    rim_b = ndimage.binary_dilation(b) & ~ndimage.binary_erosion(b)
    return bool(np.all(~(a ^ b) | (rim_a & rim_b)))


def assert_same_dx_chest_findings(got: Findings, expected: Findings) -> None:
    """CTR to 1e-4, every mask within one pixel, the same verdict and findings."""
    assert abs(ratios(got)[0].value - ratios(expected)[0].value) <= 1e-4
    assert [s.key for s in got.segments] == [s.key for s in expected.segments]
    for mine, theirs in zip(got.segments, expected.segments, strict=True):
        assert within_one_pixel(mine.binary, theirs.binary), mine.key
    assert got.study_evaluations == expected.study_evaluations
    assert [f.tracking_id for f in got.findings] == [f.tracking_id for f in expected.findings]
