"""Model runners: thin, warm wrappers around ONNX Runtime, TorchScript and plain Python plugins.

``OnnxRunner(model_path, device)`` and ``TorchScriptRunner(model_path, device)`` are what a
plugin's ``load`` builds; both have ``.run(...) -> list[np.ndarray]`` and raise
``models.devices.GpuOutOfMemory`` when CUDA runs out of memory. ``models.runners.python``
imports a plugin's entry class from its folder; ``models.runners.generic`` is the plugin that
runs a model with the manifest's declared pre- and post-processing when there is no entry.
"""
