"""Acceptance 3: ``routes check`` on broken files prints the expected line:column messages.

The ``.expected`` files were written by hand from the broken ``.yaml`` beside them (line and
column of the offending key or value, counted in the file).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from node.routing import cli
from routers.check import check_text
from routers.schema import routes_json_schema

GOLDEN = Path(__file__).parent / "golden" / "routing" / "check"
PLUGINS = {"ct-lung-nodule": ("1.0.0", "1.1.0"), "dx-chest": ("1.0.0",)}
DESTINATIONS = {"pacs": False, "shadow-review": True}


@pytest.mark.parametrize("name", sorted(p.stem for p in GOLDEN.glob("*.yaml")))
def test_check_golden(name: str) -> None:
    text = (GOLDEN / f"{name}.yaml").read_text(encoding="utf-8")
    report = check_text(text, f"{name}.yaml", PLUGINS, DESTINATIONS)
    printed = "".join(d.format() + "\n" for d in report.diagnostics)
    assert printed == (GOLDEN / f"{name}.expected").read_text(encoding="utf-8")
    assert report.table is None


def main(argv: list[str]) -> int:
    """The routing commands as ``ainode`` runs them (without the other areas' commands)."""
    parser = argparse.ArgumentParser(prog="ainode")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def write_node_yaml(folder: Path, routes: Path) -> Path:
    node_yaml = folder / "node.yaml"
    node_yaml.write_text(
        f"routes_file: {routes}\n"
        "plugin_dirs: []\n"
        "destinations:\n"
        "  pacs: {kind: folder, path: out}\n"
        "  shadow-review: {kind: folder, path: shadow, shadow: true}\n",
        encoding="utf-8",
    )
    return node_yaml


def test_cli_exits_non_zero_and_prints_locations(tmp_path: Path, capsys) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text((GOLDEN / "unknown_keyword.yaml").read_text(), encoding="utf-8")
    node_yaml = write_node_yaml(tmp_path, routes)
    assert main(["routes", "check", "--config", str(node_yaml)]) == 1
    out = capsys.readouterr().out
    assert f"{routes}:4:7: error: unknown keyword 'Modalty'" in out
    assert "1 problem" not in out and "problem(s); the file is not used until fixed" in out


def test_cli_accepts_a_valid_file(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(cli, "installed_plugins", lambda config: {"ct-lung-nodule": ("1.0",)})
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        "routes:\n"
        "  - name: chest-ct\n"
        "    when: {Modality: CT, body_part: chest}\n"
        "    run: [ct-lung-nodule]\n"
        "    send_to: [pacs]\n",
        encoding="utf-8",
    )
    node_yaml = write_node_yaml(tmp_path, routes)
    assert main(["routes", "check", str(routes), "--config", str(node_yaml)]) == 0
    assert capsys.readouterr().out == f"{routes}: OK, 1 route(s), 1 enabled\n"
    monkeypatch.setattr(cli, "installed_plugins", lambda config: {"dx-chest": ("1.0",)})
    assert main(["routes", "check", str(routes), "--config", str(node_yaml)]) == 1
    assert f"{routes}:4:11: error: unknown plugin 'ct-lung-nodule'" in capsys.readouterr().out


def test_config_schema_describes_both_files(capsys) -> None:
    from node.cli import main

    assert main(["config", "schema", "routes"]) == 0
    routes_schema = json.loads(capsys.readouterr().out)
    assert routes_schema == routes_json_schema()
    route = routes_schema["$defs"]["RouteSpec"]
    assert {"name", "when", "series", "run", "send_to", "mode"} <= set(route["properties"])
    assert route["properties"]["mode"]["$ref"].endswith("/Mode")
    assert main(["config", "schema"]) == 0
    node_schema = json.loads(capsys.readouterr().out)
    assert {"listener", "destinations", "routes_file"} <= set(node_schema["properties"])


def test_schema_accepts_the_shipped_routes_file() -> None:
    """The JSON Schema editors get agrees with the file we ship (jsonschema if installed)."""
    jsonschema = pytest.importorskip("jsonschema")
    import yaml

    shipped = yaml.safe_load((Path(__file__).parent.parent / "config" / "routes.yaml").read_text())
    jsonschema.validate(shipped, routes_json_schema())
