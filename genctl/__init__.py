"""genctl: train, sample, evaluate and compare generative image models from YAML recipes.

Plugins import what they need from here: ``hookimpl`` to mark hook implementations and the
contract types of :mod:`genctl.spec`.
"""

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("genctl")
"""Marker for hook implementations: ``@genctl.hookimpl``."""

__all__ = ["__version__", "hookimpl"]
