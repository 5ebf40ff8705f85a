"""Flow matching / rectified flow (Lipman et al. 2023; Liu et al. 2023) on the ddpm family's
UNet: a straight path from images to noise, a velocity target, Euler/Heun ODE sampling, class
conditioning with classifier-free guidance, img2img. See README.md in this folder."""

from __future__ import annotations

import genctl
from genctl.spec import ModelSpec


@genctl.hookimpl
def genctl_register_models(registry) -> None:
    from genctl_ddpm.model import build_networks

    from genctl_flow.config import FlowConfig
    from genctl_flow.loss import FlowMatchingObjective
    from genctl_flow.sampler import FlowSampleOptions, FlowSampler

    registry.add(
        ModelSpec(
            name="flow",
            task="unconditional",  # labels, when the data has them, feed model.conditional
            config=FlowConfig,
            build=build_networks,  # ddpm's UNet, checked against the data as there
            objective=FlowMatchingObjective,
            sampler=FlowSampler,
            sampler_options=FlowSampleOptions,
            takes_input=False,  # img2img inputs are optional: used when --input is given
            description="Flow matching / rectified flow on ddpm's UNet: straight path, velocity "
            "target, Euler/Heun ODE sampling; class-conditional with classifier-free guidance; "
            "img2img",
            paper="Lipman et al. 2023, https://arxiv.org/abs/2210.02747; Liu et al. 2023, "
            "https://arxiv.org/abs/2209.03003; Esser et al. 2024 (logit-normal t), "
            "https://arxiv.org/abs/2403.03206",
        )
    )
