"""``ainode plugins list|check`` and ``ainode shadow report``.

``plugins list`` shows every installed plugin version with its runner (and a container's
image), the device it would run on with this node's GPU configuration, and whether it is
ready or broken. ``plugins check`` validates every manifest (schema, model file and sha256,
entry module, codes, isolated interpreter; for a container the engine, the pinned image and
its digest, GPU passthrough and what a MAP declares) and exits 1 when any has an error, so
it can gate a deployment.
Paths are printed relative to the current folder where they lie under it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from models.containers.check import check_container
from models.containers.engine import EngineSettings
from models.containers.plugin import ContainerRuntime
from models.discovery import Catalog, discover
from models.errors import PermanentPluginError
from models.manifest import PluginManifest, RunnerKind
from models.manifest_checks import CheckProblem, Severity, check_manifest
from models.runners.triton import triton_problems
from models.runtime import container_runtime_for
from node.config import DEFAULT_CONFIG, ConfigError, load_node_config
from node.db import connect
from node.shadow import agreement_report, masks_dir_for


def register(subparsers: argparse._SubParsersAction) -> None:
    plugins = subparsers.add_parser("plugins", help="installed AI plugins")
    actions = plugins.add_subparsers(dest="plugins_command", required=True, metavar="ACTION")
    for name, handler, text in (
        ("list", cmd_list, "name, version, runner, device and state of every plugin"),
        ("check", cmd_check, "validate every manifest; exit 1 on errors"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="node.yaml")
        action.add_argument(
            "--plugin-dir",
            type=Path,
            action="append",
            dest="plugin_dirs",
            metavar="DIR",
            help="search DIR instead of node.yaml's plugin_dirs (repeatable)",
        )
        action.add_argument(
            "--no-entry-points",
            action="store_true",
            help="ignore plugins installed as Python entry points",
        )
        action.set_defaults(func=handler)

    shadow = subparsers.add_parser("shadow", help="production versus shadow plugins")
    shadow_actions = shadow.add_subparsers(dest="shadow_command", required=True, metavar="ACTION")
    report = shadow_actions.add_parser("report", help="agreement of shadow with production")
    report.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="node.yaml")
    report.add_argument("--plugin", help="only pairs involving this plugin")
    report.set_defaults(func=cmd_shadow_report)


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


class _Checks:
    """``check_manifest``, plus the engine and image checks of container plugins (the engine
    is looked for once, when the first container plugin is checked)."""

    def __init__(self, settings: EngineSettings, data_dir: Path) -> None:
        self.settings = settings
        self.data_dir = data_dir
        self._runtime: ContainerRuntime | str | None = None

    def problems(self, manifest: PluginManifest) -> list[CheckProblem]:
        problems = check_manifest(manifest)
        if manifest.triton is not None:
            return [*problems, *triton_problems(manifest.triton)]
        if manifest.runner is not RunnerKind.CONTAINER:
            return problems
        if self._runtime is None:
            try:
                self._runtime = container_runtime_for(self.settings, self.data_dir)
            except PermanentPluginError as exc:
                self._runtime = str(exc)
        if isinstance(self._runtime, str):
            return [*problems, CheckProblem(Severity.ERROR, self._runtime)]
        return [*problems, *check_container(manifest, self._runtime)]


def _catalog_and_gpus(
    args: argparse.Namespace,
) -> tuple[Catalog, tuple[int, ...], _Checks] | None:
    config = None
    if args.plugin_dirs is None or args.config.exists():
        try:
            config = load_node_config(args.config)
        except ConfigError as exc:
            print(f"ainode: bad configuration: {exc}", file=sys.stderr)
            return None
    gpus = config.devices.gpus if config is not None else ()
    plugin_dirs = args.plugin_dirs or (config.plugin_dirs if config is not None else ())
    checks = (
        _Checks(config.containers, config.storage.data_dir)
        if config is not None
        else _Checks(EngineSettings(), Path("data"))
    )
    return discover(plugin_dirs, entry_points=not args.no_entry_points), gpus, checks


def device_label(manifest: PluginManifest, gpus: tuple[int, ...]) -> str:
    share = manifest.resources.gpu
    device = f"cuda ×{share:g}" if share and gpus else "cpu"
    return f"{device} (isolated)" if manifest.isolated else device


def cmd_list(args: argparse.Namespace) -> int:
    found = _catalog_and_gpus(args)
    if found is None:
        return 2
    catalog, gpus, checks = found
    if gpus:
        from models.devices import cuda_device_count

        gpus = tuple(g for g in gpus if g < cuda_device_count())
    rows = [("NAME", "VERSION", "RUNNER", "DEVICE", "STATE")]
    for manifest in catalog.manifests:
        errors = [p for p in checks.problems(manifest) if p.severity is Severity.ERROR]
        state = "broken" if errors else "ready"
        runner = manifest.runner.value
        if manifest.container is not None:
            runner += f" {manifest.container.image}"
        if manifest.triton is not None:
            runner += f" {manifest.triton.model}@{manifest.triton.url}"
        if manifest.vendor is not None:
            vendor = manifest.vendor
            runner += " " + (vendor.stowrs_url or f"{vendor.ae_title}@{vendor.host}:{vendor.port}")
        rows.append((manifest.name, manifest.version, runner, device_label(manifest, gpus), state))
    for problem in catalog.problems:
        rows.append((_shown(Path(problem.source)), "-", "-", "-", "broken"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    found = _catalog_and_gpus(args)
    if found is None:
        return 2
    catalog, _, checks = found
    broken = len(catalog.problems)
    for manifest in catalog.manifests:
        problems = checks.problems(manifest)
        errors = [p for p in problems if p.severity is Severity.ERROR]
        broken += bool(errors)
        verdict = f"{len(errors)} error(s)" if errors else "ok"
        print(f"{manifest.key} ({_shown(manifest.directory)}): {verdict}")
        for problem in problems:
            print(f"  {problem}")
    for problem in catalog.problems:
        print(f"{_shown(Path(problem.source))}: broken")
        for line in problem.problems:
            print(f"  error: {line}")
    total = len(catalog.manifests) + len(catalog.problems)
    print(f"{total} manifest(s): {total - broken} ok, {broken} broken")
    return 1 if broken else 0


def cmd_shadow_report(args: argparse.Namespace) -> int:
    try:
        config = load_node_config(args.config)
    except ConfigError as exc:
        print(f"ainode: bad configuration: {exc}", file=sys.stderr)
        return 2
    conn = connect(config.storage.database_path)
    try:
        report = agreement_report(conn, masks_dir_for(config.storage.data_dir), plugin=args.plugin)
    finally:
        conn.close()
    print(report.format())
    return 0
