"""pynetdicom's private API is used in ``node/pynetdicom_seam.py`` and nowhere else in node/.

The private names are read from the installed pynetdicom itself (its modules named ``_*``,
and every ``_name`` its classes define or assign on ``self``), so a new internal is caught too.
A use is an import of a private module or name, an attribute of that name on anything but
``self``, and, in a class derived from a pynetdicom class, ``self._name`` or a method that
overrides one. Our own classes keep their own ``_name`` attributes, even where pynetdicom
happens to use the same name.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pynetdicom

from tests.conftest import REPO

NODE = REPO / "node"
SEAM = NODE / "pynetdicom_seam.py"
#: Names only pynetdicom uses: a plain grep (comments and docstrings included) finds them
#: nowhere outside the seam.
UNAMBIGUOUS = (
    "_accepted_cx",
    "_sent_release",
    "_dul_ready",
    "_kill_thread",
    "_reactor_checkpoint",
    "_is_paused",
    "_serve_request",
    "_run_reactor",
    "_create_association",
    "_read_pdu_data",
    "_is_transport_event",
    "_process_recv_primitive",
    "_decode_pdu",
    "_recv_pdu",
    "_idle_timer",
)


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


@cache
def pynetdicom_private_names() -> frozenset[str]:
    """Every private module, method and instance attribute name of the installed pynetdicom."""
    package = Path(pynetdicom.__file__).parent
    names = {path.stem for path in package.glob("_*.py") if _private(path.stem)}
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                names.update(
                    item.name
                    for item in node.body
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
                    and _private(item.name)
                )
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "self"
                and _private(node.attr)
            ):
                names.add(node.attr)
    return frozenset(names)


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _trees() -> dict[str, tuple[Path, ast.Module]]:
    return {
        _module_name(path): (path, ast.parse(path.read_text(encoding="utf-8")))
        for path in sorted(NODE.rglob("*.py"))
    }


def _imported_names(tree: ast.Module) -> dict[str, str]:
    """Local name -> the module it was imported from, for ``from X import name``."""
    return {
        alias.asname or alias.name: node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
        for alias in node.names
    }


@cache
def pynetdicom_derived_classes() -> frozenset[tuple[str, str]]:
    """(module, class) of every class in node/ that derives, at any depth, from pynetdicom."""
    bases: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for module, (_, tree) in _trees().items():
        imported = _imported_names(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                names = [b.id for b in node.bases if isinstance(b, ast.Name)]
                bases[module, node.name] = [(imported.get(n, module), n) for n in names]
    derived: set[tuple[str, str]] = set()
    changed = True
    while changed:
        changed = False
        for cls, parents in bases.items():
            if cls not in derived and any(
                parent[0].split(".")[0] == "pynetdicom" or parent in derived for parent in parents
            ):
                derived.add(cls)
                changed = True
    return frozenset(derived)


def private_uses(module: str) -> list[str]:
    """``file:line: name`` for each use of a pynetdicom private name in ``module``."""
    path, tree = _trees()[module]
    private = pynetdicom_private_names()
    derived = pynetdicom_derived_classes()
    where = path.relative_to(REPO)
    uses: list[str] = []

    def visit(node: ast.AST, in_derived: bool) -> None:
        if isinstance(node, ast.ClassDef):
            in_derived = (module, node.name) in derived
        name = None
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pynetdicom"):
            parts = [*(node.module or "").split("."), *(a.name for a in node.names)]
            name = next((p for p in parts if _private(p)), None)
        elif isinstance(node, ast.Import):
            dotted = [a.name for a in node.names if a.name.split(".")[0] == "pynetdicom"]
            name = next((n for n in dotted if any(map(_private, n.split(".")))), None)
        elif isinstance(node, ast.Attribute) and node.attr in private:
            on_self = isinstance(node.value, ast.Name) and node.value.id in {"self", "cls"}
            name = node.attr if in_derived or not on_self else None
        elif isinstance(node, ast.FunctionDef) and in_derived and node.name in private:
            name = node.name
        if name is not None:
            uses.append(f"{where}:{node.lineno}: {name}")
        for child in ast.iter_child_nodes(node):
            visit(child, in_derived)

    visit(tree, False)
    return uses


def test_no_module_but_the_seam_uses_a_private_name_of_pynetdicom() -> None:
    uses = [
        use
        for module in _trees()
        if module != "node.pynetdicom_seam"
        for use in private_uses(module)
    ]
    assert uses == [], "pynetdicom internals belong in node/pynetdicom_seam.py:\n" + "\n".join(uses)


def test_the_scan_sees_the_seams_own_uses() -> None:
    """The scan is not blind: the seam's imports, attributes and overrides are found."""
    found = {use.rsplit(": ", 1)[1] for use in private_uses("node.pynetdicom_seam")}
    expected = {"_config", "_globals", "_accepted_cx", "_kill", "_reactor_checkpoint"}
    assert expected | {"_run_reactor", "_read_pdu_data", "_create_association"} <= found
    assert {("node.ingest.association", "EventAssociation")} <= pynetdicom_derived_classes()
    assert {("node.ingest.dul", "EventDUL")} <= pynetdicom_derived_classes()


def test_no_text_outside_the_seam_names_pynetdicom_internals() -> None:
    """A grep, comments and docstrings included, for the names only pynetdicom uses."""
    pattern = re.compile(rf"(?<!\w)({'|'.join(UNAMBIGUOUS)})\b|pynetdicom\._\w+")
    hits = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in sorted(NODE.rglob("*.py"))
        if path != SEAM
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert hits == [], "\n".join(hits)
    assert all(name in pynetdicom_private_names() for name in UNAMBIGUOUS)
