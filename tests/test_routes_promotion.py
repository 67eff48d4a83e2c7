"""Promoting a shadow plugin version to production, and rolling back, by rewriting routes.yaml.

Real files in tmp_path; the only stand-in is ``validate``, which runs ``routers.check`` the
way the node does. The rewritten file must differ from the operator's only in the lines the
change is about, and must load with the node's own loader.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from routers.check import check_text, load_route_table
from routers.promotion import (
    PromotionRefused,
    RoutesAction,
    production_versions,
    promote,
    rollback,
    shadow_versions,
    text_digest,
)

PLUGINS = {"ct-lung-nodule": ("1.0.0", "1.1.0", "2.0"), "dx-chest": ("1.0.0",)}
DESTINATIONS = {"pacs": False, "shadow-review": True}
REPO = Path(__file__).resolve().parent.parent

# Comments, a wrapped flow list and an anchor: what ruamel's own dump would re-flow.
ROUTES = """\
# Site routes -- edited by hand, keep this header.
routes:
  # Chest CT, production.
  - name: ct-chest
    priority: 10
    when: {modality: CT, body_part: chest}
    series:
      include_sop_class: [CTImageStorage, EnhancedCTImageStorage,
                          LegacyConvertedEnhancedCTImageStorage]
    run: [ct-lung-nodule@1.0.0]   # the version the site trusts
    send_to: [pacs]

  # The candidate, beside production until it is trusted.
  - name: ct-chest-candidate
    mode: shadow
    when: {modality: CT, body_part: chest}
    run: [ct-lung-nodule@1.1.0]
    send_to: [shadow-review]

  - name: cxr
    when: {modality: [CR, DX], body_part: chest}
    series:
      include_sop_class: &radiographs
        [ComputedRadiographyImageStorage,
         DigitalXRayImageStorageForPresentation]
    run: [dx-chest]
    send_to: [pacs]
"""


def validate(text: str, plugins: dict[str, tuple[str, ...]] = PLUGINS) -> None:
    """What the node wires in: ``routers.check`` against the installed plugins."""
    report = check_text(text, "routes.yaml", plugins, DESTINATIONS)
    if not report.ok:
        raise ValueError("\n".join(d.format() for d in report.diagnostics))


def refuse(text: str) -> None:
    raise ValueError("routes.yaml:1:1: error: refused by the test")


@pytest.fixture
def routes(tmp_path: Path) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text(ROUTES, encoding="utf-8")
    return path


def loaded(path: Path) -> dict[str, tuple[bool, tuple[str, ...]]]:
    """Route name -> (enabled, run) as the node's loader reads the file."""
    table = load_route_table(path, PLUGINS, DESTINATIONS)
    return {r.name: (r.enabled, tuple(str(p) for p in r.run)) for r in table.routes}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != "routes.yaml")


def test_promote_pins_production_and_disables_the_shadow_route(routes: Path) -> None:
    os.chmod(routes, 0o640)
    change = promote(routes, "ct-lung-nodule", "1.1.0", validate, text_digest(ROUTES))

    expected = ROUTES.replace(
        "run: [ct-lung-nodule@1.0.0]   #", "run: [ct-lung-nodule@1.1.0]   #"
    ).replace(
        "  - name: ct-chest-candidate\n", "  - name: ct-chest-candidate\n    enabled: false\n"
    )
    assert routes.read_text(encoding="utf-8") == expected == change.after_text
    assert change.action is RoutesAction.PROMOTE
    assert (change.plugin, change.version) == ("ct-lung-nodule", "1.1.0")
    assert change.previous == {"ct-chest": "ct-lung-nodule@1.0.0"}
    assert change.routes_changed == ("ct-chest", "ct-chest-candidate")
    assert change.before_text == ROUTES
    assert change.before_digest == text_digest(ROUTES)
    assert change.after_digest == text_digest(expected)
    assert stat.S_IMODE(routes.stat().st_mode) == 0o640
    assert leftovers(routes.parent) == []
    assert loaded(routes) == {
        "ct-chest": (True, ("ct-lung-nodule@1.1.0",)),
        "ct-chest-candidate": (False, ("ct-lung-nodule@1.1.0",)),
        "cxr": (True, ("dx-chest",)),
    }
    assert production_versions(expected) == {"ct-lung-nodule": ("1.1.0",), "dx-chest": (None,)}
    assert shadow_versions(expected) == {}


def test_rollback_restores_the_pin_and_re_enables_the_shadow_route(routes: Path) -> None:
    promoted = promote(routes, "ct-lung-nodule", "1.1.0", validate)
    change = rollback(routes, "ct-lung-nodule", "1.0.0", validate, promoted.after_digest)

    expected = ROUTES.replace(
        "  - name: ct-chest-candidate\n", "  - name: ct-chest-candidate\n    enabled: true\n"
    )
    assert routes.read_text(encoding="utf-8") == expected == change.after_text
    assert change.action is RoutesAction.ROLLBACK
    assert change.version == "1.0.0"
    assert change.previous == {"ct-chest": "ct-lung-nodule@1.1.0"}
    assert change.routes_changed == ("ct-chest", "ct-chest-candidate")
    assert loaded(routes)["ct-chest-candidate"] == (True, ("ct-lung-nodule@1.1.0",))
    assert production_versions(expected)["ct-lung-nodule"] == ("1.0.0",)
    assert shadow_versions(expected) == {"ct-lung-nodule": ("1.1.0",)}


def test_rollback_to_unpinned(routes: Path) -> None:
    change = rollback(routes, "ct-lung-nodule", None, validate)

    assert change.version is None
    assert routes.read_text(encoding="utf-8") == ROUTES.replace(
        "[ct-lung-nodule@1.0.0]", "[ct-lung-nodule]"
    )
    assert loaded(routes)["ct-chest"] == (True, ("ct-lung-nodule",))
    # the shadow route runs 1.1.0, not the 1.0.0 rolled back from: left as it was
    assert change.routes_changed == ("ct-chest",)


MAPPING_ROUTES = """\
routes:
  - name: flow
    when: {modality: CT}
    run: [{plugin: ct-lung-nodule, version: "1.0.0"}, dx-chest]  # inline
    send_to: [pacs]
  - name: block
    when: {modality: CT}
    run:
      - plugin: ct-lung-nodule
        version: '1.0.0'
    send_to: [pacs]
  - name: candidate
    enabled: true
    mode: shadow
    when: {modality: CT}
    run:
      - {plugin: ct-lung-nodule, version: "2.0"}
"""


def test_mapping_refs_keep_their_form(routes: Path) -> None:
    routes.write_text(MAPPING_ROUTES, encoding="utf-8")

    promote(routes, "ct-lung-nodule", "2.0", validate)
    promoted = (
        MAPPING_ROUTES.replace('version: "1.0.0"}, dx', 'version: "2.0"}, dx')
        .replace("version: '1.0.0'", "version: '2.0'")
        .replace("  enabled: true\n", "  enabled: false\n")
    )
    assert routes.read_text(encoding="utf-8") == promoted

    change = rollback(routes, "ct-lung-nodule", None, validate)
    unpinned = promoted.replace(
        '{plugin: ct-lung-nodule, version: "2.0"}, dx', "{plugin: ct-lung-nodule}, dx"
    )
    unpinned = unpinned.replace("        version: '2.0'\n", "")
    unpinned = unpinned.replace("  enabled: false\n", "  enabled: true\n")
    assert routes.read_text(encoding="utf-8") == unpinned == change.after_text
    assert change.previous == {"flow": "ct-lung-nodule@2.0", "block": "ct-lung-nodule@2.0"}
    assert loaded(routes) == {
        "flow": (True, ("ct-lung-nodule", "dx-chest")),
        "block": (True, ("ct-lung-nodule",)),
        "candidate": (True, ("ct-lung-nodule@2.0",)),
    }


def test_an_unpinned_mapping_gets_a_version_that_reads_as_text(routes: Path) -> None:
    """Plain 2.0 would be a float, which the schema refuses: the new value is quoted."""
    text = (
        "routes:\n"
        "  - name: flow\n"
        "    when: {modality: CT}\n"
        "    run: [{plugin: ct-lung-nodule}, dx-chest]  # inline\n"
        "    send_to: [pacs]\n"
        "  - name: block\n"
        "    when: {modality: CT}\n"
        "    run:\n"
        "      - plugin: ct-lung-nodule\n"
        "    send_to: [pacs]\n"
        "  - name: candidate\n"
        "    mode: shadow\n"
        "    when: {modality: CT}\n"
        "    run: [ct-lung-nodule@2.0]\n"
    )
    routes.write_text(text, encoding="utf-8")

    promote(routes, "ct-lung-nodule", "2.0", validate)

    assert routes.read_text(encoding="utf-8") == (
        text.replace("{plugin: ct-lung-nodule}", '{plugin: ct-lung-nodule, version: "2.0"}')
        .replace(
            "  - plugin: ct-lung-nodule\n", '  - plugin: ct-lung-nodule\n        version: "2.0"\n'
        )
        .replace("  - name: candidate\n", "  - name: candidate\n    enabled: false\n")
    )
    assert loaded(routes)["block"] == (True, ("ct-lung-nodule@2.0",))


def test_a_key_on_the_dash_line_is_rewritten_by_round_trip(routes: Path) -> None:
    """The version line cannot be cut out alone; ruamel rewrites, comments survive."""
    text = (
        "# header\n"
        "routes:\n"
        "  - name: block  # production\n"
        "    when: {modality: CT}\n"
        "    run:\n"
        "      - version: 1.0.0\n"
        "        plugin: ct-lung-nodule\n"
        "    send_to: [pacs]\n"
    )
    routes.write_text(text, encoding="utf-8")

    rollback(routes, "ct-lung-nodule", None, validate)

    after = routes.read_text(encoding="utf-8")
    assert after == text.replace("      - version: 1.0.0\n        plugin", "      - plugin")
    assert loaded(routes)["block"] == (True, ("ct-lung-nodule",))


def test_windows_line_ends_are_kept(routes: Path) -> None:
    routes.write_bytes(ROUTES.replace("\n", "\r\n").encode("utf-8"))

    promote(routes, "ct-lung-nodule", "1.1.0", validate)

    after = routes.read_bytes().decode("utf-8")
    assert "\r\n    enabled: false\r\n" in after
    assert after.count("\n") == after.count("\r\n") == ROUTES.count("\n") + 1


def assert_refused(routes: Path, match: str, call: object) -> None:
    before = routes.read_bytes()
    with pytest.raises(PromotionRefused, match=match):
        call()  # type: ignore[operator]
    assert routes.read_bytes() == before
    assert leftovers(routes.parent) == []


def test_refused_without_an_enabled_shadow_route(routes: Path) -> None:
    assert_refused(
        routes,
        "no enabled shadow route runs ct-lung-nodule@2.0",
        lambda: promote(routes, "ct-lung-nodule", "2.0", validate),
    )
    routes.write_text(ROUTES.replace("    mode: shadow\n", "    mode: shadow\n    enabled: no\n"))
    assert_refused(
        routes,
        "no enabled shadow route runs ct-lung-nodule@1.1.0",
        lambda: promote(routes, "ct-lung-nodule", "1.1.0", validate),
    )


def test_refused_without_a_production_route(routes: Path) -> None:
    routes.write_text(ROUTES.replace("[ct-lung-nodule@1.0.0]", "[dx-chest]"), encoding="utf-8")
    assert_refused(
        routes,
        "no production route runs ct-lung-nodule",
        lambda: promote(routes, "ct-lung-nodule", "1.1.0", validate),
    )
    assert_refused(
        routes,
        "no production route runs ct-lung-nodule",
        lambda: rollback(routes, "ct-lung-nodule", "1.0.0", validate),
    )


def test_refused_when_production_already_runs_it(routes: Path) -> None:
    assert_refused(
        routes,
        r"production already runs ct-lung-nodule@1\.0\.0",
        lambda: rollback(routes, "ct-lung-nodule", "1.0.0", validate),
    )


def test_refused_when_the_file_changed_since_it_was_read(routes: Path) -> None:
    seen = text_digest(ROUTES)
    routes.write_text(ROUTES + "# an operator's edit\n", encoding="utf-8")
    assert_refused(
        routes,
        "changed since it was read; reload it and try again",
        lambda: promote(routes, "ct-lung-nodule", "1.1.0", validate, seen),
    )


def test_refused_when_the_file_changes_while_it_is_rewritten(routes: Path) -> None:
    edited = ROUTES + "# saved by the operator meanwhile\n"

    def operator_saves(text: str) -> None:
        routes.write_text(edited, encoding="utf-8")

    with pytest.raises(PromotionRefused, match="changed while it was rewritten"):
        promote(routes, "ct-lung-nodule", "1.1.0", operator_saves)
    assert routes.read_text(encoding="utf-8") == edited
    assert leftovers(routes.parent) == []


def test_a_symlinked_routes_file_stays_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "site" / "routes.yaml"
    real.parent.mkdir()
    real.write_text(ROUTES, encoding="utf-8")
    link = tmp_path / "routes.yaml"
    link.symlink_to(real)

    promote(link, "ct-lung-nodule", "1.1.0", validate)

    assert link.is_symlink()
    assert "ct-lung-nodule@1.1.0]   #" in real.read_text(encoding="utf-8")


def test_refused_when_validate_refuses(routes: Path) -> None:
    assert_refused(
        routes,
        "would not be valid after this change, so nothing was written:\n.*refused by the test",
        lambda: promote(routes, "ct-lung-nodule", "1.1.0", refuse),
    )
    # the node's own check: 1.1.0 is not installed here
    with pytest.raises(PromotionRefused, match=r"has no installed version '1\.1\.0'"):
        promote(
            routes,
            "ct-lung-nodule",
            "1.1.0",
            lambda text: validate(text, {"ct-lung-nodule": ("1.0.0",), "dx-chest": ()}),
        )
    assert routes.read_text(encoding="utf-8") == ROUTES


def test_an_alias_is_followed_only_where_every_user_should_change(routes: Path) -> None:
    """Two production routes sharing one `run:` list both change; a shadow route sharing it
    would change too, so that is refused."""
    shared = ROUTES.replace("run: [ct-lung-nodule@1.0.0]", "run: &common [ct-lung-nodule@1.0.0]")
    both = shared.replace("    run: [dx-chest]\n", "    run: *common\n")
    routes.write_text(both, encoding="utf-8")
    change = promote(routes, "ct-lung-nodule", "1.1.0", validate)
    assert change.routes_changed == ("ct-chest", "ct-chest-candidate", "cxr")
    assert loaded(routes)["cxr"] == (True, ("ct-lung-nodule@1.1.0",))
    assert "run: &common [ct-lung-nodule@1.1.0]   #" in change.after_text

    old_shadow = (
        "  - name: ct-chest-old\n"
        "    mode: shadow\n"
        "    enabled: false\n"
        "    when: {modality: CT}\n"
        "    run: *common\n"
    )
    routes.write_text(shared + old_shadow, encoding="utf-8")
    assert_refused(
        routes,
        "anchor/alias",
        lambda: promote(routes, "ct-lung-nodule", "1.1.0", validate),
    )


def test_versions_for_a_console() -> None:
    text = ROUTES + (
        "  - name: off\n"
        "    enabled: false\n"
        "    when: {modality: MR}\n"
        "    run: [ct-lung-nodule@0.9]\n"
        "  - name: shadow-unpinned\n"
        "    mode: shadow\n"
        "    when: {modality: MR}\n"
        "    run: [dx-chest, {plugin: ct-lung-nodule, version: '2.0'}]\n"
    )
    assert production_versions(text) == {"ct-lung-nodule": ("1.0.0",), "dx-chest": (None,)}
    assert shadow_versions(text) == {"ct-lung-nodule": ("1.1.0", "2.0")}
    assert production_versions("") == {}
    with pytest.raises(ValueError, match="ainode routes check"):
        production_versions("routes: [\n")


def test_the_library_imports_nothing_from_the_node() -> None:
    """A console or CLI uses it without a node: importing it must not pull in ``node``."""
    code = (
        "import sys, routers.promotion; print(any(m.split('.')[0] == 'node' for m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert result.stdout.strip() == "False"
