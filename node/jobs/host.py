"""The worker process's ``PluginHost``, built from node.yaml.

``models.runtime`` knows nothing of node.yaml: it takes a catalog, GPU slots, a timeout and
the container settings. This is where the node's configuration becomes those.
"""

from __future__ import annotations

from pathlib import Path

from models.devices import GpuSlots
from models.discovery import discover
from models.runtime import PluginHost
from node.config import NodeConfig


def plugin_host_for(config: NodeConfig) -> PluginHost:
    """node.yaml's plugin_dirs, devices and jobs timeout; GPU slots counted in its data folder."""
    data_dir = Path(config.storage.data_dir)
    slots = GpuSlots(config.devices.gpus, config.devices.slots_per_gpu, data_dir / "gpu-slots")
    return PluginHost(
        discover(config.plugin_dirs),
        slots,
        timeout_s=config.jobs.timeout_s,
        plugin_dirs=config.plugin_dirs,
        containers=(config.containers, data_dir),
    )
