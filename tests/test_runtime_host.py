"""PluginHost: warm instances, versions side by side, needs chains, timeouts, GPU slots, OOM."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import wait_until
from runtime_support import write_plugin

from models.api import DeviceKind, PluginInput, SourceFrame
from models.devices import GpuSlots
from models.discovery import available_plugins, discover
from models.runtime import InputRefused, PluginError, PluginHost, PluginTimeout

# A python plugin whose behaviour the tests steer through class attributes of its module,
# reached via sys.modules (every version is imported under its own package name).
PROBE = """
    import threading
    from models.api import (AlgorithmIdentification, DeviceKind, Findings, Measurement,
                            Report, Segment)
    from models.devices import GpuOutOfMemory
    from pydicom.sr.coding import Code

    MM = Code("mm", "UCUM", "millimeter")

    class Probe:
        loads = []
        running = 0
        most_running = 0
        gate = None                 # a threading.Event the run waits for, when set
        lock = threading.Lock()
        oom_on_gpu = False

        def __init__(self, manifest):
            self.manifest = manifest
            self.name, self.version = manifest.name, manifest.version

        def load(self, device):
            Probe.loads.append((self.version, device))
            self.device = device

        def run(self, series):
            with Probe.lock:
                Probe.running += 1
                Probe.most_running = max(Probe.most_running, Probe.running)
            try:
                if Probe.gate is not None:
                    Probe.gate.wait(30)
                if Probe.oom_on_gpu and self.device.kind is DeviceKind.CUDA:
                    raise GpuOutOfMemory("CUDA out of memory (test)")
                prior = ",".join(f"{k}={v.study_measurements[0].value:g}"
                                 for k, v in series.prior.items())
                value = float(series.pixels.sum()) + len(series.prior)
                return Findings(
                    AlgorithmIdentification(self.name, self.version),
                    study_measurements=(Measurement(Code("1", "99TEST", "sum"), value, MM),),
                    report=Report(f"{self.version} on {self.device}", prior or "none"),
                )
            finally:
                with Probe.lock:
                    Probe.running -= 1
"""


def _series(modality: str = "CT") -> PluginInput:
    return PluginInput(
        study_instance_uid="1.2",
        series_instance_uid="1.2.3",
        modality=modality,
        pixels=np.ones((2, 3, 3), np.float32),
        sources=(
            SourceFrame("1.2.840.10008.5.1.4.1.1.2", "1.2.3.1"),
            SourceFrame("1.2.840.10008.5.1.4.1.1.2", "1.2.3.2"),
        ),
        pixel_spacing=(1.0, 1.0),
    )


def _probe(name: str, version: str) -> type:
    import sys

    module = sys.modules[f"ainode_plugin_{name.replace('-', '_')}_{version.replace('.', '_')}"]
    return module.plugin.Probe


def _plugin(root: Path, name: str, version: str = "1.0.0", **extra: object) -> Path:
    return write_plugin(
        root / f"{name}-{version}",
        name=name,
        version=version,
        entry="plugin:Probe",
        code=PROBE,
        extra=dict(extra),
    )


def _host(root: Path, gpus: tuple[int, ...] = (), slots_per_gpu: int = 1) -> PluginHost:
    slots = GpuSlots(gpus, slots_per_gpu, root / "slots", check_cuda=False)
    return PluginHost(discover([root / "plugins"], entry_points=False), slots, timeout_s=60)


def test_plugins_load_once_and_stay_warm(tmp_path: Path) -> None:
    _plugin(tmp_path / "plugins", "warm")
    host = _host(tmp_path)
    first = host.run("warm", None, _series())
    host.run("warm", "1.0.0", _series())
    probe = _probe("warm", "1.0.0")
    assert len(probe.loads) == 1
    assert first.study_measurements[0].value == 18.0
    (loaded,) = host.loaded()
    assert (loaded.key, loaded.runs) == ("warm@1.0.0", 2)


def test_a_new_version_loads_beside_the_old_and_none_means_newest(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    _plugin(plugins, "versioned", "1.2.0")
    _plugin(plugins, "versioned", "1.10.0")
    assert available_plugins([plugins]) == {"versioned": ("1.2.0", "1.10.0")}
    host = _host(tmp_path)
    assert host.run("versioned", "1.2.0", _series()).report.findings.startswith("1.2.0")
    assert host.run("versioned", None, _series()).report.findings.startswith("1.10.0")
    assert [p.key for p in host.loaded()] == ["versioned@1.10.0", "versioned@1.2.0"]
    with pytest.raises(PluginError, match=r"no version '9\.9'"):
        host.run("versioned", "9.9", _series())


def test_needs_run_first_and_their_findings_arrive_as_prior(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    _plugin(plugins, "lungs")
    _plugin(plugins, "nodules", needs=["lungs"])
    _plugin(plugins, "report", needs=["nodules", "lungs"])
    host = _host(tmp_path)
    chain = host.run_chain("report", None, _series())
    assert list(chain.findings) == ["lungs", "nodules", "report"]
    assert chain.findings["nodules"].report.impression == "lungs=18"
    assert chain.final.report.impression == "lungs=18,nodules=19"


def test_cycles_missing_needs_and_wrong_modalities_fail_clearly(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    _plugin(plugins, "chicken", needs=["egg"])
    _plugin(plugins, "egg", needs=["chicken"])
    _plugin(plugins, "orphan", needs=["ghost"])
    _plugin(plugins, "xray-only", input={"modalities": ["CR", "DX"]})
    _plugin(plugins, "long-series", input={"min_frames": 40})
    _plugin(plugins, "fine-pixels", input={"max_pixel_spacing_mm": 0.5})
    host = _host(tmp_path)
    with pytest.raises(PluginError, match="cycle: chicken → egg → chicken"):
        host.run("chicken", None, _series())
    with pytest.raises(PluginError, match="needs 'ghost', which is not installed"):
        host.run("orphan", None, _series())
    with pytest.raises(PluginError, match=r"accepts modalities \['CR', 'DX'\].*CT"):
        host.run("xray-only", None, _series())
    with pytest.raises(InputRefused, match="at least 40 frames, the series has 2"):
        host.run("long-series", None, _series())
    with pytest.raises(PluginError, match=r"at most 0\.5 mm, the series has 1 mm"):
        host.run("fine-pixels", None, _series())


def test_three_concurrent_gpu_jobs_on_one_slot_run_one_at_a_time(tmp_path: Path) -> None:
    _plugin(tmp_path / "plugins", "gpu-heavy", resources={"gpu": 1})
    _plugin(tmp_path / "plugins", "gpu-half", resources={"gpu": 0.5})
    host = _host(tmp_path, gpus=(0,))
    host.warm_up("gpu-heavy")
    host.warm_up("gpu-half")
    heavy, half = _probe("gpu-heavy", "1.0.0"), _probe("gpu-half", "1.0.0")
    assert heavy.loads[0][1].kind is DeviceKind.CUDA

    # count the slot requests refused, to know the other jobs are really waiting
    refused = [0]
    try_acquire = host.slots._try_acquire

    def counting(quarters: int) -> object:
        taken = try_acquire(quarters)
        refused[0] += taken is None
        return taken

    host.slots._try_acquire = counting  # type: ignore[method-assign]
    for name, probe, expected_together in (("gpu-heavy", heavy, 1), ("gpu-half", half, 2)):
        probe.gate = threading.Event()
        results: list[object] = []
        refused[0] = 0

        def job(name: str = name, results: list[object] = results) -> None:
            results.append(host.run(name, None, _series()))

        threads = [threading.Thread(target=job) for _ in range(3)]
        for thread in threads:
            thread.start()
        wait_until(lambda p=probe, n=expected_together: p.running == n, what="jobs running")
        wait_until(lambda n=expected_together: refused[0] >= 2 * (3 - n), what="jobs refused")
        assert probe.running == expected_together
        probe.gate.set()
        for thread in threads:
            thread.join(timeout=60)
        assert len(results) == 3
        assert probe.most_running == expected_together
        assert len(probe.loads) == expected_together  # one warm instance per concurrent run


def test_a_job_past_its_deadline_times_out_and_frees_its_slot(tmp_path: Path) -> None:
    _plugin(tmp_path / "plugins", "slow", resources={"gpu": 1})
    host = _host(tmp_path, gpus=(0,))
    host.warm_up("slow")
    probe = _probe("slow", "1.0.0")
    probe.gate = threading.Event()
    with pytest.raises(PluginTimeout, match="did not finish within the job timeout"):
        host.run("slow", None, _series(), timeout_s=0.2)
    assert host.loaded() == ()  # the stuck instance is not reused
    probe.gate.set()
    wait_until(lambda: probe.running == 0, what="the timed-out run to return")
    host.slots.acquire(1, timeout_s=5).release()


@pytest.mark.parametrize("fallback", [True, False])
def test_cuda_out_of_memory_retries_on_cpu_only_where_allowed(
    tmp_path: Path, fallback: bool
) -> None:
    _plugin(
        tmp_path / "plugins",
        "greedy",
        resources={"gpu": 1, "memory_mb": 256, "cpu_fallback_on_oom": fallback},
    )
    host = _host(tmp_path, gpus=(0,))
    host.warm_up("greedy")
    _probe("greedy", "1.0.0").oom_on_gpu = True
    if fallback:
        chain = host.run_chain("greedy", None, _series())
        assert chain.devices["greedy"].kind is DeviceKind.CPU
        assert chain.final.report.findings == "1.0.0 on cpu"
    else:
        with pytest.raises(PluginError, match=r"CUDA out of memory.*cpu_fallback_on_oom: false"):
            host.run("greedy", None, _series())


def test_a_plugin_that_raises_fails_the_job_with_its_message(tmp_path: Path) -> None:
    write_plugin(
        tmp_path / "plugins" / "broken",
        name="broken",
        entry="plugin:Broken",
        code="""
            class Broken:
                def __init__(self, manifest):
                    self.name, self.version = manifest.name, manifest.version
                def load(self, device):
                    pass
                def run(self, series):
                    raise ValueError("lung fields not found")
        """,
    )
    with pytest.raises(PluginError, match=r"broken@1\.0\.0 failed: ValueError: lung fields"):
        _host(tmp_path).run("broken", None, _series())


def test_a_version_installed_while_running_loads_beside_the_warm_one(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    _plugin(plugins, "upgraded", "1.0.0")
    slots = GpuSlots((), 1, tmp_path / "slots", check_cuda=False)
    host = PluginHost(discover([plugins], entry_points=False), slots, plugin_dirs=[plugins])
    assert host.run("upgraded", None, _series()).report.findings.startswith("1.0.0")
    _plugin(plugins, "upgraded", "1.1.0")  # dropped in by an operator; no restart
    assert host.run("upgraded", None, _series()).report.findings.startswith("1.1.0")
    assert host.run("upgraded", "1.0.0", _series()).report.findings.startswith("1.0.0")
    assert [(p.key, p.runs) for p in host.loaded()] == [
        ("upgraded@1.0.0", 2),
        ("upgraded@1.1.0", 1),
    ]
    assert len(_probe("upgraded", "1.0.0").loads) == 1  # the old version stayed warm


def test_a_model_file_that_differs_from_its_manifest_never_loads(tmp_path: Path) -> None:
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"trained weights")
    folder = _plugin(tmp_path / "plugins", "tampered")
    write_plugin(folder, name="tampered", entry="plugin:Probe", code=PROBE, model=weights)
    (folder / "weights.bin").write_bytes(b"other weights")
    with pytest.raises(PluginError, match=r"weights\.bin: sha256 mismatch"):
        _host(tmp_path).run("tampered", None, _series())
    (folder / "weights.bin").unlink()
    with pytest.raises(PluginError, match=r"model file weights\.bin is missing"):
        _host(tmp_path).run("tampered", None, _series())
