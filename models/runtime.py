"""``PluginHost``: the one object a worker process uses to run plugins.

It loads each plugin version once per device and keeps it warm across jobs; a new version
loads beside the old one (instances are keyed by ``name@version``). A job names the last
plugin of a chain; ``needs`` are resolved first and run in order, each seeing the earlier
Findings in ``PluginInput.prior``. Every plugin takes its GPU share from ``GpuSlots`` for
the length of its run, so all worker processes together never exceed the slots. A job has
a deadline: past it the job fails with ``PluginTimeout`` (an isolated worker is killed; an
in-process plugin is dropped from the warm set and its slot freed when it returns). A CUDA
out-of-memory error fails the job with a clear message, or, where the manifest allows
(``resources.cpu_fallback_on_oom``), retries the plugin on the CPU.

Typical use by the executor (the node builds the host from node.yaml: ``node.jobs.host``)::

    host = PluginHost(discover(plugin_dirs), slots, plugin_dirs=plugin_dirs)
    findings = host.run("dx-chest", None, plugin_input)     # newest installed version
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType

from models.api import Device, DeviceKind, Findings, Plugin, PluginInput
from models.containers.engine import ContainerEngine, EngineSettings, EngineUnavailable
from models.containers.plugin import ContainerPlugin, ContainerRuntime, container_owner
from models.devices import GpuOutOfMemory, GpuSlots, SlotLease, is_out_of_memory
from models.discovery import Catalog, discover, manifest_signature
from models.errors import InputRefused, PermanentPluginError, PluginError, PluginTimeout
from models.isolation import IsolatedPlugin
from models.manifest import PluginManifest, RunnerKind
from models.manifest_checks import model_file_problem
from models.refusal import input_refusal
from models.runners.python import instantiate

__all__ = [
    "ChainResult",
    "InputRefused",
    "LoadedPlugin",
    "PermanentPluginError",
    "PluginError",
    "PluginHost",
    "PluginState",
    "PluginTimeout",
    "catalog_of",
]

log = logging.getLogger(__name__)


class PluginState(StrEnum):
    LOADED = "loaded"
    BUSY = "busy"


@dataclass(frozen=True)
class LoadedPlugin:
    key: str
    device: Device
    state: PluginState
    runs: int


@dataclass(frozen=True)
class ChainResult:
    """Findings of every plugin of a chain, in the order they ran (the last is the job's)."""

    findings: MappingProxyType[str, Findings]
    devices: MappingProxyType[str, Device]

    @property
    def final(self) -> Findings:
        return list(self.findings.values())[-1]


@dataclass(frozen=True)
class _Deadline:
    """When the job must be done by (monotonic clock), and the timeout it came from."""

    at: float
    seconds: float

    @classmethod
    def after(cls, seconds: float) -> _Deadline:
        return cls(time.monotonic() + seconds, seconds)

    def remaining(self) -> float:
        return self.at - time.monotonic()


class _Instance:
    def __init__(self, plugin: Plugin, device: Device) -> None:
        self.plugin = plugin
        self.device = device
        self.busy = False
        self.runs = 0


class PluginHost:
    """Warm plugins for one worker process; safe to call from several threads."""

    def __init__(
        self,
        catalog: Catalog,
        slots: GpuSlots,
        *,
        timeout_s: float = 900.0,
        isolated_retries: int = 1,
        plugin_dirs: Sequence[Path] | None = None,
        containers: tuple[EngineSettings, Path] | None = None,
    ) -> None:
        self.catalog = catalog
        # with plugin_dirs, a version added (or edited) on disk is picked up by the next job
        self._plugin_dirs = None if plugin_dirs is None else tuple(plugin_dirs)
        self._signature = (
            None if self._plugin_dirs is None else manifest_signature(self._plugin_dirs)
        )
        self.slots = slots
        self.timeout_s = timeout_s
        self.isolated_retries = isolated_retries
        # per version and device, a pool: concurrent jobs in one process each get their own
        self._instances: dict[tuple[str, Device], list[_Instance]] = {}
        self._lock = threading.Lock()
        # engine settings and the data folder; the engine is found when a container first runs
        self._container_settings = containers
        self._container_runtime: ContainerRuntime | None = None

    def _refresh(self) -> None:
        """Rediscover when a manifest under plugin_dirs appeared, vanished or changed."""
        if self._plugin_dirs is None:
            return
        signature = manifest_signature(self._plugin_dirs)
        if signature != self._signature:
            self.catalog = discover(self._plugin_dirs)
            self._signature = signature
            log.info(
                "plugin folders changed: %d plugin version(s) installed",
                len(self.catalog.manifests),
            )

    # -- plugin graph --------------------------------------------------------------------------

    def resolve_chain(self, name: str, version: str | None = None) -> tuple[PluginManifest, ...]:
        """The plugins to run for ``name``: its ``needs`` (depth first, once each), then it."""
        self._refresh()
        order: list[PluginManifest] = []
        visiting: list[str] = []

        def visit(manifest: PluginManifest) -> None:
            if manifest.name in visiting:
                cycle = " → ".join([*visiting[visiting.index(manifest.name) :], manifest.name])
                raise PluginError(f"plugin needs form a cycle: {cycle}")
            if any(m.name == manifest.name for m in order):
                return
            visiting.append(manifest.name)
            for needed in manifest.needs:
                try:
                    visit(self.catalog.get(needed))
                except KeyError as exc:
                    raise PluginError(
                        f"{manifest.key} needs {needed!r}, which is not installed"
                    ) from exc
            visiting.pop()
            order.append(manifest)

        try:
            target = self.catalog.get(name, version)
        except KeyError as exc:
            raise PluginError(str(exc.args[0])) from exc
        visit(target)
        return tuple(order)

    # -- warm instances ------------------------------------------------------------------------

    def _take_instance(self, manifest: PluginManifest, device: Device) -> _Instance:
        """A free warm instance for this version on this device, loading one if needed."""
        key = (manifest.key, device)
        with self._lock:
            for instance in self._instances.get(key, []):
                if not instance.busy:
                    instance.busy = True
                    return instance
        problem = model_file_problem(manifest)  # once per load: a swapped file never runs
        if problem is not None:
            raise PermanentPluginError(f"{manifest.key}: {problem}")
        plugin: Plugin
        if manifest.runner is RunnerKind.CONTAINER:
            plugin = ContainerPlugin(manifest, self.container_runtime())
        elif manifest.isolated:
            plugin = IsolatedPlugin(manifest, retries=self.isolated_retries)
        else:
            plugin = instantiate(manifest)
        started = time.perf_counter()
        plugin.load(device)
        log.info("loaded %s on %s in %.2fs", manifest.key, device, time.perf_counter() - started)
        instance = _Instance(plugin, device)
        instance.busy = True
        with self._lock:
            self._instances.setdefault(key, []).append(instance)
        return instance

    def container_runtime(self) -> ContainerRuntime:
        """The engine, scratch folder and owner label container plugins share."""
        if self._container_runtime is None:
            if self._container_settings is None:
                raise PermanentPluginError("container plugins need a node configuration")
            settings, data_dir = self._container_settings
            self._container_runtime = container_runtime_for(settings, data_dir)
        return self._container_runtime

    def _return_instance(self, instance: _Instance) -> None:
        with self._lock:
            instance.busy = False
            instance.runs += 1

    def _drop_instance(self, manifest: PluginManifest, instance: _Instance) -> None:
        with self._lock:
            pool = self._instances.get((manifest.key, instance.device), [])
            if instance in pool:
                pool.remove(instance)
        if isinstance(instance.plugin, IsolatedPlugin | ContainerPlugin):
            instance.plugin.kill()

    def loaded(self) -> tuple[LoadedPlugin, ...]:
        with self._lock:
            return tuple(
                LoadedPlugin(
                    key,
                    device,
                    PluginState.BUSY if instance.busy else PluginState.LOADED,
                    instance.runs,
                )
                for (key, device), pool in sorted(
                    self._instances.items(), key=lambda item: (item[0][0], str(item[0][1]))
                )
                for instance in pool
            )

    def warm_up(self, name: str, version: str | None = None) -> None:
        """Load a plugin (and what it needs) now, e.g. a new version beside the running one."""
        for manifest in self.resolve_chain(name, version):
            lease = self.slots.acquire(
                manifest.resources.gpu, memory_limit_mb=manifest.resources.memory_mb
            )
            try:
                instance = self._take_instance(manifest, lease.device)
                self._return_instance(instance)
            finally:
                lease.release()

    def close(self) -> None:
        with self._lock:
            instances = [i for pool in self._instances.values() for i in pool]
            self._instances = {}
        for instance in instances:
            if isinstance(instance.plugin, IsolatedPlugin | ContainerPlugin):
                instance.plugin.close()

    # -- running -------------------------------------------------------------------------------

    def _run_with_deadline(
        self,
        manifest: PluginManifest,
        lease: SlotLease,
        series: PluginInput,
        deadline: _Deadline,
    ) -> Findings:
        """Run on the lease's device; the lease is released when the plugin returns."""
        if deadline.remaining() <= 0:
            lease.release()
            raise PluginTimeout(f"{manifest.key}: job deadline passed before it started")
        try:
            instance = self._take_instance(manifest, lease.device)
        except BaseException:
            lease.release()
            raise
        outcome: dict[str, object] = {}
        finished = threading.Event()

        def work() -> None:
            try:
                outcome["findings"] = instance.plugin.run(series)
            except BaseException as exc:
                outcome["error"] = exc
            finally:
                # back to the pool before the slot is free, so the next job reuses it warm
                self._return_instance(instance)
                lease.release()
                finished.set()

        context = contextvars.copy_context()  # the job's log folder (JOB_LOG_DIR) goes along
        thread = threading.Thread(
            target=context.run, args=(work,), name=f"plugin-{manifest.key}", daemon=True
        )
        thread.start()
        if not finished.wait(deadline.remaining()):
            self._drop_instance(manifest, instance)
            raise PluginTimeout(
                f"{manifest.key} did not finish within the job timeout of {deadline.seconds:g} s"
            )
        if "error" in outcome:
            error = outcome["error"]
            assert isinstance(error, BaseException)
            raise error
        findings = outcome["findings"]
        if not isinstance(findings, Findings):
            raise PluginError(
                f"{manifest.key}.run returned {type(findings).__name__}, not models.api.Findings"
            )
        return findings

    def _run_one(
        self, manifest: PluginManifest, series: PluginInput, deadline: _Deadline
    ) -> tuple[Findings, Device]:
        resources = manifest.resources
        wait = max(0.0, deadline.remaining())
        try:
            lease = self.slots.acquire(
                resources.gpu, memory_limit_mb=resources.memory_mb, timeout_s=wait
            )
        except TimeoutError as exc:
            raise PluginTimeout(f"{manifest.key}: {exc}") from exc
        device = lease.device
        try:
            return self._run_with_deadline(manifest, lease, series, deadline), device
        except PluginError:
            raise
        except Exception as exc:
            if device.kind is DeviceKind.CUDA and (
                isinstance(exc, GpuOutOfMemory) or is_out_of_memory(exc)
            ):
                if not resources.cpu_fallback_on_oom:
                    raise PluginError(
                        f"{manifest.key}: CUDA out of memory on {device}; the manifest does not "
                        f"allow a CPU retry (resources.cpu_fallback_on_oom: false): {exc}"
                    ) from exc
                log.warning("%s: CUDA out of memory on %s, retrying on CPU", manifest.key, device)
                return self._run_on_cpu_after_oom(manifest, series, deadline), Device()
            raise PluginError(f"{manifest.key} failed: {type(exc).__name__}: {exc}") from exc

    def _run_on_cpu_after_oom(
        self, manifest: PluginManifest, series: PluginInput, deadline: _Deadline
    ) -> Findings:
        try:
            return self._run_with_deadline(manifest, self.slots.acquire(0), series, deadline)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(
                f"{manifest.key} failed on CPU after CUDA ran out of memory: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def run_chain(
        self,
        name: str,
        version: str | None,
        series: PluginInput,
        *,
        timeout_s: float | None = None,
    ) -> ChainResult:
        """Run ``name`` (and what it needs, first) on ``series`` within one deadline."""
        deadline = _Deadline.after(self.timeout_s if timeout_s is None else timeout_s)
        findings: dict[str, Findings] = {}
        devices: dict[str, Device] = {}
        for manifest in self.resolve_chain(name, version):
            refusal = input_refusal(manifest, series)
            if refusal is not None:
                raise InputRefused(f"{manifest.key} does not accept this series: {refusal}")
            given = replace(series, prior=MappingProxyType(dict(findings)))
            result, device = self._run_one(manifest, given, deadline)
            shapes = {segment.shape for segment in result.segments}
            if shapes and shapes != {series.shape}:
                raise PluginError(
                    f"{manifest.key} returned masks of shape {sorted(shapes)}, "
                    f"the input is {series.shape}"
                )
            findings[manifest.name] = result
            devices[manifest.name] = device
        return ChainResult(MappingProxyType(findings), MappingProxyType(devices))

    def run(
        self,
        name: str,
        version: str | None,
        series: PluginInput,
        *,
        timeout_s: float | None = None,
    ) -> Findings:
        """The job's Findings: those of the last plugin of the chain."""
        return self.run_chain(name, version, series, timeout_s=timeout_s).final


def container_runtime_for(settings: EngineSettings, data_dir: Path) -> ContainerRuntime:
    """The container runtime of the node whose data folder is ``data_dir``."""
    try:
        engine = ContainerEngine.detect(settings)
    except EngineUnavailable as exc:
        raise PermanentPluginError(str(exc)) from exc
    data_dir = Path(data_dir).resolve()
    return ContainerRuntime(engine, data_dir / "containers", container_owner(data_dir))


def catalog_of(manifests: Iterable[PluginManifest]) -> Catalog:
    """A Catalog of given manifests, for a ``PluginHost`` built without plugin folders."""
    return Catalog.of(manifests)
