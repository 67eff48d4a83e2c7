"""Acceptance 5: ``routes explain`` for a matched and an unmatched corpus study (golden), and
for a study in the index, where the rejected series say why."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import pytest
from routing_support import add_instance, add_series, shipped_table

from node.db import connect
from node.routing import cli
from routers.attributes import study_views_from_paths
from routers.explain import explain_study

GOLDEN = Path(__file__).parent / "golden" / "routing" / "explain"


def explain_folder(folder: Path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (study,) = study_views_from_paths([folder])
    return explain_study(shipped_table(), study)


@pytest.mark.corpus
@pytest.mark.parametrize(
    ("folder", "golden"),
    [
        ("ct-chest-lidc/LIDC-IDRI-0002", "lidc-0002-matched"),
        ("ct-head-phantom-philips-study", "philips-head-unmatched"),
    ],
)
def test_explain_corpus_study_golden(corpus: Path, folder: str, golden: str) -> None:
    expected = (GOLDEN / f"{golden}.expected").read_text(encoding="utf-8")
    assert explain_folder(corpus / folder) == expected


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ainode")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_explain_study_in_the_index_says_why_series_were_not_selected(
    tmp_path: Path, capsys
) -> None:
    node_yaml = tmp_path / "node.yaml"
    routes = Path(__file__).parent.parent / "config" / "routes.yaml"
    node_yaml.write_text(
        f"storage: {{data_dir: {tmp_path / 'data'}}}\nroutes_file: {routes}\n",
        encoding="utf-8",
    )
    conn = connect(tmp_path / "data" / "ainode.sqlite3")
    study = "1.2.826.0.1.3680043.10.9"
    add_series(
        conn, 40, study=study, series=f"{study}.1", thickness=1.0, series_description="AX LUNG 1.0"
    )
    add_series(
        conn, 40, study=study, series=f"{study}.2", thickness=5.0, series_description="AX 5.0"
    )
    add_instance(
        conn,
        study=study,
        series=f"{study}.3",
        sop=f"{study}.3.1",
        image_type="ORIGINAL\\PRIMARY\\LOCALIZER",
        orientation="0\\1\\0\\0\\0\\-1",
        series_description="SCOUT",
    )
    add_series(
        conn,
        2,
        study=study,
        series=f"{study}.4",
        modality="SR",
        sop_class="1.2.840.10008.5.1.4.1.1.88.22",
        body_part=None,
        series_description="PhoenixZIPReport",
    )
    conn.close()

    assert run_cli(["routes", "explain", study, "--config", str(node_yaml)]) == 0
    out = capsys.readouterr().out
    assert f"study {study} (version 1): 4 series" in out
    assert "result: ct-chest-lung-nodule -> ct-lung-nodule on S1" in out
    assert "   -> S1: selected: passes every series filter and wins prefer: thinnest" not in out
    assert "   -> S1: selected: passes every series filter\n" in out
    assert "      S2: slice thickness 5 mm > 2.5 mm" in out
    assert "      S3: ImageType contains LOCALIZER" in out
    assert "      S4: `when` fails at modality == 'CT' -- actual: 'SR'" in out
    assert "MUST^NOT^LEAK" not in out  # the patient name in the index is never printed


def test_explain_unknown_uid_fails_cleanly(tmp_path: Path, capsys) -> None:
    node_yaml = tmp_path / "node.yaml"
    routes = Path(__file__).parent.parent / "config" / "routes.yaml"
    node_yaml.write_text(
        f"storage: {{data_dir: {tmp_path / 'data'}}}\nroutes_file: {routes}\n", encoding="utf-8"
    )
    assert run_cli(["routes", "explain", "1.2.3.404", "--config", str(node_yaml)]) == 1
    assert "no such file, folder or study in the index" in capsys.readouterr().err


@pytest.mark.corpus
def test_explain_says_which_plugin_will_refuse_a_radiograph_without_spacing(
    corpus: Path, tmp_path: Path
) -> None:
    """The NEMA CR states PixelSpacing 0\\0: a chest plugin that needs a spacing will refuse
    it, and explain says so with the reason; the shipped chest plugins do without."""
    from runtime_support import write_plugin

    from models.discovery import Catalog, discover

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (study,) = study_views_from_paths([corpus / "xr-chest" / "RG1_J2KI.dcm"])
    plugins = tmp_path / "plugins"
    write_plugin(plugins / "strict", name="dx-chest-report", entry="plugin:X", code="")
    text = explain_study(shipped_table(), study, discover([plugins]))
    assert (
        "dx-chest-report will refuse S1: dx-chest-report@1.0.0 needs a calibrated pixel spacing "
        "(input.needs_spacing), and the series has no calibrated pixel spacing "
        "(PixelSpacing 0.0\\0.0 is not positive; no ImagerPixelSpacing)"
    ) in text
    shipped = Path(__file__).resolve().parent.parent / "models" / "plugins"
    assert "will refuse" not in explain_study(shipped_table(), study, discover([shipped]))
    assert "will refuse" not in explain_study(shipped_table(), study, Catalog(()))
