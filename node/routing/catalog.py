"""What node.yaml tells a routes check: the plugins installed and the shadow destinations.

``routers.check`` takes both as plain mappings so it never reads node.yaml itself; the stage,
the CLI and the console build them here from the same configuration.
"""

from __future__ import annotations

from models.discovery import available_plugins
from node.config import NodeConfig


def destination_flags(config: NodeConfig) -> dict[str, bool]:
    """node.yaml destination name -> its ``shadow`` flag."""
    return {name: bool(dest.shadow) for name, dest in config.destinations.items()}


def installed_plugins(config: NodeConfig) -> dict[str, tuple[str, ...]]:
    """Installed plugin name -> versions, from node.yaml's plugin folders and entry points."""
    return available_plugins(config.plugin_dirs)
