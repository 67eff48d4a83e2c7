"""Plain Python plugins: import the manifest's entry class from the plugin's own folder.

``entry: plugin:DxChestPlugin`` means the file ``plugin.py`` in the plugin folder, class
``DxChestPlugin``, constructed as ``DxChestPlugin(manifest)``. Each version is imported under
its own module name (``ainode_plugin_<name>_<version>.<module>``), so two versions of one
plugin load side by side in one process without either seeing the other's code.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from types import ModuleType

from models.api import Plugin
from models.manifest import PluginManifest

__all__ = ["PluginLoadError", "instantiate", "load_entry_class"]


class PluginLoadError(RuntimeError):
    """The plugin's entry module or class cannot be loaded."""


def _package_name(manifest: PluginManifest) -> str:
    return "ainode_plugin_" + re.sub(r"\W", "_", f"{manifest.name}_{manifest.version}")


def _import_from(manifest: PluginManifest, module: str) -> ModuleType:
    package = _package_name(manifest)
    if package not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            package,
            manifest.directory / "__init__.py",
            submodule_search_locations=[str(manifest.directory)],
        )
        assert spec is not None
        package_module = importlib.util.module_from_spec(spec)
        sys.modules[package] = package_module
        if (manifest.directory / "__init__.py").is_file():
            assert spec.loader is not None
            spec.loader.exec_module(package_module)
    return importlib.import_module(f"{package}.{module}")


def load_entry_class(manifest: PluginManifest) -> type:
    if manifest.entry is None:
        raise PluginLoadError(f"{manifest.key} has no entry class")
    module_name, class_name = manifest.entry.split(":")
    try:
        module = _import_from(manifest, module_name)
    except Exception as exc:
        raise PluginLoadError(
            f"{manifest.key}: cannot import {module_name} from {manifest.directory}: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    try:
        return getattr(module, class_name)
    except AttributeError as exc:
        raise PluginLoadError(
            f"{manifest.key}: module {module_name} has no class {class_name}"
        ) from exc


def instantiate(manifest: PluginManifest) -> Plugin:
    """The plugin object: the entry class, or the generic model plugin when there is none."""
    if manifest.entry is None:
        from models.runners.generic import GenericModelPlugin

        return GenericModelPlugin(manifest)
    plugin = load_entry_class(manifest)(manifest)
    if not isinstance(plugin, Plugin):
        raise PluginLoadError(
            f"{manifest.key}: {manifest.entry} does not implement models.api.Plugin "
            "(name, version, load(device), run(series))"
        )
    return plugin
