"""Every hook genctl calls, typed and documented. Plugins implement them with ``@genctl.hookimpl``.

A plugin is any module registered under the ``genctl`` entry-point group:

.. code-block:: toml

    [project.entry-points.genctl]
    mymodel = "genctl_mymodel"

Hooks receive a registry and add to it (rather than returning values), so the host can reject
duplicates with a message naming both plugins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from genctl.plugins import ModelRegistry

hookspec = pluggy.HookspecMarker("genctl")


# ---------------------------------------------------------------- model families


@hookspec
def genctl_register_models(registry: ModelRegistry) -> None:
    """Register the models this plugin offers.

    :param registry: call ``registry.add(ModelSpec(...))`` once per model. A name already taken
        by another plugin is rejected with an error naming both plugins.

    Since 0.1.0.
    """


# ---------------------------------------------------------------- diffusion guidance


@hookspec
def genctl_register_guidance(registry: Any) -> None:
    """Register guidance functions for the diffusion sampler (``genctl sample ... guide=NAME``).

    :param registry: call ``registry.add(name, make, default_scale=1.0, description="")``.
        ``make(options, data_info, device)`` gets the sampler options (``color``, ``target_class``,
        ``classifier`` ...) and returns ``loss(x0, t)``: one loss per image (a tensor of N)
        for the sampler's estimate ``x0`` of the clean images (N x C x H x W in [-1, 1]) at
        timesteps ``t``. The sampler moves each noisy image against the gradient of that loss
        before each step. A name already taken is rejected with an error naming both plugins.
        Built in (genctl_ddpm): ``color``, ``classifier``.

    Since 0.1.0.
    """
