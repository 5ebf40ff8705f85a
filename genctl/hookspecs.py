"""Every hook genctl calls, typed and documented. Plugins implement them with ``@genctl.hookimpl``.

A plugin is any module registered under the ``genctl`` entry-point group:

.. code-block:: toml

    [project.entry-points.genctl]
    mymodel = "genctl_mymodel"

Hooks receive a registry and add to it (rather than returning values), so the host can reject
duplicates with a message naming both plugins.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
