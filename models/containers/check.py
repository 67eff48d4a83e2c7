"""``ainode plugins check`` for a container plugin: the engine, the image, GPUs, the contract.

It pulls nothing and runs nothing: the image is inspected, and a MAP's ``app.json`` is read
out of a created (never started) container.
"""

from __future__ import annotations

from models.containers.engine import EngineUnavailable
from models.containers.plugin import ContainerRuntime, image_problem, resolve_contract
from models.containers.spec import ContractKind
from models.errors import PermanentPluginError
from models.manifest import PluginManifest
from models.manifest_checks import CheckProblem, Severity

__all__ = ["check_container"]


def check_container(manifest: PluginManifest, runtime: ContainerRuntime) -> list[CheckProblem]:
    """What an operator needs to know before routing studies to this product."""
    spec = manifest.container
    if spec is None:
        return []
    engine = runtime.engine
    found = [
        CheckProblem(
            Severity.INFO, f"engine {engine.kind.value} {engine.version()} ({engine.binary})"
        )
    ]
    problem = image_problem(engine, spec)
    if problem is not None:
        return [*found, CheckProblem(Severity.ERROR, problem)]
    found.append(CheckProblem(Severity.INFO, f"image {spec.image} is present"))
    if manifest.resources.gpu:
        passthrough = engine.gpu_passthrough()
        found.append(
            CheckProblem(Severity.INFO, f"GPU passthrough: {passthrough}")
            if passthrough
            else CheckProblem(
                Severity.WARNING,
                "no GPU passthrough here (no CDI spec for nvidia.com/gpu, or no nvidia runtime):"
                " the product gets no GPU and must run on the CPU",
            )
        )
    try:
        layout, app = resolve_contract(runtime, spec)
    except (PermanentPluginError, ValueError, EngineUnavailable) as exc:
        return [*found, CheckProblem(Severity.ERROR, str(exc))]
    if app is not None:
        found.append(CheckProblem(Severity.INFO, app.describe()))
    elif spec.contract is ContractKind.AUTO:
        found.append(
            CheckProblem(
                Severity.INFO,
                f"no /etc/monai/app.json: a mercure module ({layout.input_dir} → "
                f"{layout.output_dir})",
            )
        )
    return found
