"""How a plugin job fails, shared by the runtime and every runner.

The job stage reads the class to decide: ``PluginError`` is retried with backoff,
``PermanentPluginError`` fails the job at once, ``PluginTimeout`` is a retried error whose
plugin was stopped (an isolated worker or a container is killed).
"""

from __future__ import annotations

__all__ = ["InputRefused", "PermanentPluginError", "PluginError", "PluginTimeout"]


class PluginError(RuntimeError):
    """A plugin job failed; the message is what the job's error column should say."""


class PluginTimeout(PluginError):
    """The job ran past its deadline."""


class PermanentPluginError(PluginError):
    """The same job would fail the same way again (a model file missing or not the one the
    manifest's sha256 names, a series the manifest refuses, a container image that is not
    there or writes what cannot be read): fail it now, don't retry."""


class InputRefused(PermanentPluginError):
    """The manifest's ``input`` section does not accept the series."""
